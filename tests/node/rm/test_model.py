"""Backbones load from local folders only, as one-output classifiers, with LoRA where asked."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from node.rm.model import MINILM, load_backbone, lora_target_modules, resolve_backbone_path, rewards


def test_bert_backbone_is_a_one_output_classifier(bert_dir) -> None:
    model, tokenizer = load_backbone(str(bert_dir))
    assert type(model).__name__ == "BertForSequenceClassification" and model.config.num_labels == 1
    batch = tokenizer(["w1 w2", "w3"], ["w4", "w5 w6 w7"], padding=True, return_tensors="pt")
    assert rewards(model, dict(batch)).shape == (2,)


def test_decoder_backbone_pads_with_eos(llama_dir) -> None:
    model, tokenizer = load_backbone(str(llama_dir))
    assert tokenizer.pad_token == tokenizer.eos_token
    assert model.config.pad_token_id == tokenizer.eos_token_id
    assert type(model).__name__ == "LlamaForSequenceClassification"


@pytest.mark.parametrize(("fixture", "targets", "head"), [("bert_dir", ["query", "value"], "classifier"),
                                                          ("llama_dir", ["q_proj", "v_proj"], "score")])
def test_lora_trains_adapters_and_head_only(request, fixture, targets, head) -> None:
    path = str(request.getfixturevalue(fixture))
    base, _ = load_backbone(path)
    assert lora_target_modules(base) == targets
    model, _ = load_backbone(path, lora=True, lora_r=4)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or f"{head}.modules_to_save" in n for n in trainable)
    assert any(f"{head}.modules_to_save" in n for n in trainable)
    assert {t for n in trainable if "lora_" in n for t in targets if f".{t}." in n} == set(targets)


def test_hub_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="never downloads"):
        load_backbone("sentence-transformers/all-MiniLM-L6-v2")
    with pytest.raises(ValueError, match="no config.json"):
        load_backbone(str(tmp_path))


def test_minilm_alias_is_a_local_folder() -> None:
    assert (Path(resolve_backbone_path(MINILM)) / "config.json").is_file()


def test_dtype_is_respected(bert_dir) -> None:
    model, _ = load_backbone(str(bert_dir), dtype=torch.bfloat16)
    assert next(model.parameters()).dtype == torch.bfloat16
