"""Backbones load from local folders only, as one-output classifiers, with LoRA where asked."""

from __future__ import annotations

import shutil
import threading
import warnings
from pathlib import Path

import pytest
import torch

from node.errors import UsageError
from node.rm.model import (
    MINILM,
    cls_path_supported,
    disable_dropout,
    load_backbone,
    lora_target_modules,
    resolve_backbone_path,
    reward_head_name,
    rewards,
    unwrap,
    wrap_lora,
)


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


@pytest.mark.parametrize("fixture", ["bert_dir", "llama_dir"])
def test_all_linear_lora_adapts_every_linear_layer_but_the_head(request, fixture) -> None:
    path = str(request.getfixturevalue(fixture))
    base, _ = load_backbone(path)
    head = reward_head_name(base)
    linear = {n for n, m in base.named_modules() if isinstance(m, torch.nn.Linear) and n != head}
    model, _ = load_backbone(path, lora=True, lora_r=4, lora_targets="all-linear")
    adapted = {n.split("base_model.model.", 1)[1].split(".lora_A.")[0]
               for n, p in model.named_parameters() if p.requires_grad and ".lora_A." in n}
    assert adapted == linear
    with pytest.raises(ValueError, match="lora_targets 'mlp' is unknown; use one of attention, all-linear"):
        load_backbone(path, lora=True, lora_targets="mlp")


def test_lora_wrapping_shows_users_no_library_deprecation_warning(bert_dir) -> None:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        load_backbone(str(bert_dir), lora=True, lora_r=4)
    assert not [w for w in seen if "is_gradient_checkpointing" in str(w.message)]


def test_lora_wrapping_in_threads_at_once_shows_no_deprecation_warning(bert_dir) -> None:
    # members of the in-process federation engine build their models at the same time: threads leaving
    # catch_warnings out of order used to restore a filter list without the filter while others were inside
    from peft import LoraConfig

    models = [load_backbone(str(bert_dir))[0] for _ in range(8)]
    barrier = threading.Barrier(len(models))

    def wrap(model: torch.nn.Module) -> None:
        barrier.wait()
        wrap_lora(model, LoraConfig(r=4, target_modules=["query", "value"]))

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        threads = [threading.Thread(target=wrap, args=(m,)) for m in models]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not [w for w in seen if "is_gradient_checkpointing" in str(w.message)]


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


def _padded_batch(tokenizer, n: int = 6) -> dict[str, torch.Tensor]:
    texts = [" ".join(f"w{(i * 7 + j) % 40}" for j in range(3 + 4 * i)) for i in range(n)]
    return dict(tokenizer(texts, ["w1 w2"] * n, padding=True, return_tensors="pt"))


@pytest.mark.parametrize("lora", [False, True])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_cls_path_equals_the_models_forward_in_rewards_and_gradients(bert_dir, lora, attn) -> None:
    model, tokenizer = load_backbone(str(bert_dir), lora=lora)
    unwrap(model).config._attn_implementation = attn
    disable_dropout(model)  # as training does; dropout's random draws would differ between the two paths
    model.train()
    batch = _padded_batch(tokenizer)
    assert (batch["attention_mask"] == 0).any(), "the batch must contain padding"
    assert cls_path_supported(model)
    grads = []
    outputs = []
    for exact in (True, False):
        r = rewards(model, batch, exact_graph=exact)
        (r * torch.arange(1.0, len(r) + 1)).sum().backward()
        outputs.append(r.detach())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        model.zero_grad(set_to_none=True)
    assert outputs[0].shape == (6,)
    torch.testing.assert_close(outputs[1], outputs[0], atol=1e-5, rtol=1e-5)
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, atol=1e-5, rtol=1e-4, msg=f"gradient of {name} differs")


def test_cls_path_is_only_taken_for_bert_classifiers(llama_dir) -> None:
    model, _ = load_backbone(str(llama_dir))
    assert not cls_path_supported(model)


def test_mean_pool_init_makes_cls_the_mean_of_the_tokens(bert_dir, tmp_path: Path) -> None:
    """With the last layer's query zeroed, [CLS] attends evenly: its attention output is the mean of the values."""
    model, tokenizer = load_backbone(str(bert_dir), mean_pool_init=True)
    last = model.bert.encoder.layer[-1]
    assert not last.attention.self.query.weight.any() and not last.attention.self.query.bias.any()
    assert model.bert.encoder.layer[0].attention.self.query.weight.any()  # only the last layer changes
    batch = dict(tokenizer(["w1 w2 w3", "w4"], ["w5", "w6 w7"], padding=True, return_tensors="pt"))
    seen: dict[str, torch.Tensor] = {}
    last.attention.self.register_forward_hook(lambda m, i, o: seen.update(context=o[0]))  # returns None
    last.register_forward_pre_hook(lambda m, i: seen.update(hidden=i[0]))
    model.eval()
    with torch.no_grad():
        model(**batch)
        values = last.attention.self.value(seen["hidden"])  # (N, T, D)
    mask = batch["attention_mask"].unsqueeze(-1).float()  # (N, T, 1)
    mean = (values * mask).sum(1) / mask.sum(1)  # (N, D): padding excluded
    torch.testing.assert_close(seen["context"][:, 0], mean, atol=1e-5, rtol=1e-5)

    # the query still learns
    model.train()
    rewards(model, batch).sum().backward()
    assert last.attention.self.query.weight.grad.abs().sum() > 0

    # a folder that is already a reward model (head present) keeps its query; so does the default
    model.save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    with torch.no_grad():
        model.bert.encoder.layer[-1].attention.self.query.weight.fill_(0.5)
    model.save_pretrained(tmp_path / "rm")
    again, _ = load_backbone(str(tmp_path / "rm"), mean_pool_init=True)
    assert (again.bert.encoder.layer[-1].attention.self.query.weight == 0.5).all()
    plain, _ = load_backbone(str(bert_dir))
    assert plain.bert.encoder.layer[-1].attention.self.query.weight.any()


def test_mean_pool_init_leaves_decoders_alone(llama_dir) -> None:
    from node.rm.model import init_mean_pooling

    model, _ = load_backbone(str(llama_dir), mean_pool_init=True)
    assert not init_mean_pooling(model)
    assert all(p.any() for n, p in model.named_parameters() if "q_proj" in n)


def test_mean_pool_init_under_lora_zeroes_the_frozen_query(bert_dir) -> None:
    model, _ = load_backbone(str(bert_dir), lora=True, lora_r=4, mean_pool_init=True)
    base = unwrap(model)
    query = base.bert.encoder.layer[-1].attention.self.query
    assert not query.base_layer.weight.any() and not query.base_layer.weight.requires_grad


def test_lora_target_sets_agree_and_bad_ones_are_refused() -> None:
    """The config, the agreement and both CLIs keep copies of the names (they must not import torch)."""
    from federation.aggregation import STRATEGIES
    from federation.agreement import LORA_TARGET_SETS as AGREEMENT_SETS
    from node.commands import federation as federation_commands
    from node.commands import rm as rm_commands
    from node.rm.config import LORA_TARGET_SETS as CONFIG_SETS
    from node.rm.config import TrainConfig
    from node.rm.model import LORA_TARGET_SETS

    assert CONFIG_SETS == AGREEMENT_SETS == LORA_TARGET_SETS
    assert rm_commands.LORA_TARGET_CHOICES == federation_commands.LORA_TARGET_CHOICES == LORA_TARGET_SETS
    assert federation_commands.STRATEGY_CHOICES == STRATEGIES
    with pytest.raises(ValueError, match="rm.lora_targets = 'mlp' is unknown; use one of attention, all-linear"):
        TrainConfig(lora_targets="mlp")


@pytest.mark.parametrize("fixture", ["bert_dir", "llama_dir"])
def test_a_backbone_folder_without_its_tokenizer_is_refused(request, fixture, tmp_path: Path) -> None:
    # a BERT folder without tokenizer files got a special-tokens-only tokenizer built from config.json:
    # `train --base PATH` trained on all-[UNK] text; a Llama folder failed with a traceback
    source: Path = request.getfixturevalue(fixture)
    bare = tmp_path / "bare"
    bare.mkdir()
    for path in source.iterdir():
        if not path.name.startswith(("tokenizer", "special_tokens", "vocab")):
            shutil.copy(path, bare / path.name)
    with pytest.raises(UsageError, match="has no tokenizer files.*copy the tokenizer files"):
        load_backbone(str(bare))
