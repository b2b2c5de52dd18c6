"""The saved artifact is a plain Hugging Face folder that scores exactly like the trained model."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from node.rm.artifact import NotARewardModelError, RewardScorer, file_sha256, read_card, save_reward_model
from node.rm.data import PairCollator, PairEncoder, tokenize_pairs
from node.rm.evaluate import evaluate_pairs, pair_rewards
from node.rm.train import train_reward_model

from .conftest import synthetic_pairs


def card_for(result) -> dict:
    return {"base_model": "tiny", "snapshot": "sha256:abc", "sources": {"synthetic": result.n_train},
            "counts": {"train": result.n_train, "dev": result.n_dev}, "config": result.config.to_dict(),
            "metrics": result.summary()["dev"]}


@pytest.mark.parametrize("lora", [False, True])
def test_saved_model_reloads_with_plain_transformers(tiny_config, tmp_path, lora) -> None:
    config = replace(tiny_config, lora=lora, lora_r=4, epochs=2)
    pairs, dev = synthetic_pairs(32), synthetic_pairs(8, seed=9)
    dev[0] = replace(dev[0], prompt=" ".join(["w7"] * 100))  # truncated: the scorer must cut it the same way
    result = train_reward_model(pairs, dev, config, out_dir=tmp_path / "run", progress=False)
    out = tmp_path / "model"
    sha = save_reward_model(result.model, result.tokenizer, out, card_for(result))

    assert sha == file_sha256(out / "model.safetensors")
    card = read_card(out)
    assert card["sha256"] == sha and card["scoring"] == {"max_length": 48, "min_prompt_tokens": 8,
                                                          "prompt_head_fraction": 0.25}
    assert "sha256:abc" in (out / "README.md").read_text()

    # the trained model's rewards on dev, as training computed them
    encoder = PairEncoder(result.tokenizer, config.max_length, config.min_prompt_tokens, config.prompt_head_fraction)
    data = tokenize_pairs(dev, encoder)
    done: list[int] = []
    r_c, r_r = pair_rewards(result.model, data, PairCollator(encoder.pad_token_id), batch_size=3, on_batch=done.append)
    assert sum(done) == len(dev) and max(done) == 3  # each batch reported once

    # plain transformers, no PEFT, one sequence at a time
    model = AutoModelForSequenceClassification.from_pretrained(out, local_files_only=True).eval()
    assert not any("lora" in n for n, _ in model.named_parameters())
    tokenizer = AutoTokenizer.from_pretrained(out, local_files_only=True)
    assert tokenizer.pad_token_id == result.tokenizer.pad_token_id
    with torch.inference_mode():
        plain = torch.stack([model(input_ids=torch.tensor([ids]), token_type_ids=torch.tensor([types])).logits[0, 0]
                             for ids, types in zip(data.chosen, data.chosen_types, strict=True)])
    torch.testing.assert_close(plain, r_c, rtol=1e-5, atol=1e-5)

    scorer = RewardScorer(out, expected_sha256=sha)
    scores = scorer.score([q.prompt for q in dev] * 2, [q.chosen for q in dev] + [q.rejected for q in dev], batch_size=5)
    torch.testing.assert_close(torch.tensor(scores), torch.cat([r_c, r_r]), rtol=1e-5, atol=1e-5)
    assert evaluate_pairs(scorer, dev).accuracy == result.dev_report.accuracy
    direct = evaluate_pairs(result.model, dev, tokenizer=result.tokenizer, max_length=48, min_prompt_tokens=8)
    assert direct.to_json() == result.dev_report.to_json()

    if lora:  # saving merged a copy: the trained PEFT model is untouched
        assert any("lora_" in n for n, _ in result.model.named_parameters())


def test_decoder_artifact_scores_like_training(llama_dir, tiny_config, tmp_path) -> None:
    config = replace(tiny_config, base_model=str(llama_dir))
    dev = synthetic_pairs(6, seed=4)
    result = train_reward_model(synthetic_pairs(8), dev, config, out_dir=tmp_path / "run", progress=False)
    save_reward_model(result.model, result.tokenizer, tmp_path / "model", {"config": config.to_dict()})
    scorer = RewardScorer(tmp_path / "model")
    encoder = PairEncoder(result.tokenizer, config.max_length, config.min_prompt_tokens)
    r_c, _ = pair_rewards(result.model, tokenize_pairs(dev, encoder), PairCollator(encoder.pad_token_id), 4)
    torch.testing.assert_close(torch.tensor(scorer.score([q.prompt for q in dev], [q.chosen for q in dev])), r_c,
                               rtol=1e-5, atol=1e-5)


def test_save_refuses_a_used_folder_and_bad_cards(tiny_config, tmp_path) -> None:
    result = train_reward_model(synthetic_pairs(8), [], tiny_config, out_dir=tmp_path / "run", progress=False)
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("")
    with pytest.raises(ValueError, match="not an empty folder"):
        save_reward_model(result.model, result.tokenizer, tmp_path / "used", {})
    with pytest.raises(ValueError, match="not plain JSON"):
        save_reward_model(result.model, result.tokenizer, tmp_path / "new", {"x": object()})
    assert not (tmp_path / "new").exists()
    sha = save_reward_model(result.model, result.tokenizer, tmp_path / "new", {"a": 1})
    assert json.loads((tmp_path / "new" / "model_card.json").read_text())["a"] == 1
    with pytest.raises(ValueError, match="expected"):
        RewardScorer(tmp_path / "new", expected_sha256="0" * 64)
    assert RewardScorer(tmp_path / "new", expected_sha256=sha).score(["q"], ["r"])


def test_scorer_keeps_to_the_model_positions_whatever_the_card_says(tiny_config, tmp_path) -> None:
    result = train_reward_model(synthetic_pairs(8), [], tiny_config, out_dir=tmp_path / "run", progress=False)
    long_prompt = " ".join(["w7 the question"] * 100)  # ~300 tokens, over the tiny BERT's 128 positions
    old_card = {"scoring": {"max_length": 100000, "min_prompt_tokens": 8}}  # as an older version could write
    for name, card in (("old-card", old_card), ("no-card", None)):
        out = tmp_path / name
        save_reward_model(result.model, result.tokenizer, out, card or {})
        if card is None:
            (out / "model_card.json").unlink()  # a plain Hugging Face folder: the scorer's default is 512
        scorer = RewardScorer(out)
        assert scorer.encoder.max_length == 128
        assert len(scorer.score([long_prompt, "q"], ["r", long_prompt])) == 2  # cut to 128 tokens, no crash
    with pytest.raises(ValueError, match="more than the model's 128 positions"):
        RewardScorer(tmp_path / "no-card", max_length=1000)


@pytest.mark.parametrize("base", ["bert", "llama"])
def test_scorer_refuses_a_folder_without_its_tokenizer(base, tiny_config, llama_dir, tmp_path) -> None:
    # without its tokenizer files, transformers built a BERT tokenizer that knows only the special tokens
    # from config.json (every text scored the same); a Llama's failed with a traceback
    config = tiny_config if base == "bert" else replace(tiny_config, base_model=str(llama_dir))
    result = train_reward_model(synthetic_pairs(8), [], config, out_dir=tmp_path / "run", progress=False)
    out = tmp_path / "model"
    save_reward_model(result.model, result.tokenizer, out, {})
    for path in [*out.glob("tokenizer*"), *out.glob("special_tokens*"), *out.glob("vocab*")]:
        path.unlink()
    with pytest.raises(NotARewardModelError, match="has no tokenizer files.*copy the tokenizer files"):
        RewardScorer(out)
