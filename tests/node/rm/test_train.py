"""Training: parameters move, the toy preference is learned, runs are deterministic and resumable."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from node.rm.model import load_backbone
from node.rm.train import train_reward_model

from .conftest import synthetic_pairs


def initial_params(config) -> dict[str, torch.Tensor]:
    """The weights train_reward_model starts from: the backbone loaded under the same seed."""
    torch.manual_seed(config.seed)
    model, _ = load_backbone(config.base_model, lora=config.lora, lora_r=config.lora_r,
                             lora_targets=config.lora_targets, mean_pool_init=config.mean_pool_init)
    return {n: p.detach().clone() for n, p in model.named_parameters()}


# The Bradley-Terry loss depends on r_c - r_r only, so the head's bias gets no gradient from it; the
# centering term gives it one.


def unchanged_after(config, steps: int, tmp_path) -> list[str]:
    """Names of the parameters that training for `steps` optimizer steps left exactly as they started."""
    before = initial_params(config)
    result = train_reward_model(synthetic_pairs(16), [], config, out_dir=tmp_path, progress=False)
    assert result.global_step == steps
    after = dict(result.model.named_parameters())
    assert set(after) == set(before)
    return [n for n, p in after.items() if torch.equal(p.detach(), before[n])]


def test_full_fine_tuning_moves_every_parameter(tiny_config, tmp_path) -> None:
    config = replace(tiny_config, batch_size=16, center_coef=0.01, mean_pool_init=False)
    assert unchanged_after(config, 1, tmp_path) == []


def test_mean_pool_init_moves_the_last_key_from_the_second_step(tiny_config, tmp_path) -> None:
    """With the last layer's query at zero, attention scores q.k have no gradient in k: step 1 moves the query,
    and from step 2 on the keys learn too. Every other parameter moves in step 1."""
    config = replace(tiny_config, batch_size=16, center_coef=0.01, mean_pool_init=True)
    key = [f"bert.encoder.layer.1.attention.self.key.{p}" for p in ("bias", "weight")]
    assert sorted(unchanged_after(config, 1, tmp_path / "one")) == key
    assert unchanged_after(replace(config, batch_size=8), 2, tmp_path / "two") == []


@pytest.mark.parametrize("targets", ["attention", "all-linear"])
def test_lora_moves_only_adapters_and_head(tiny_config, tmp_path, targets) -> None:
    config = replace(tiny_config, lora=True, lora_r=4, batch_size=8, center_coef=0.01,  # 2 steps: lora_A moves
                     lora_targets=targets)                                             # once lora_B != 0
    before = initial_params(config)
    result = train_reward_model(synthetic_pairs(16), [], config, out_dir=tmp_path, progress=False)
    assert result.global_step == 2
    for name, p in result.model.named_parameters():
        moved = not torch.equal(p.detach(), before[name])
        assert moved == p.requires_grad, name
        assert p.requires_grad == ("lora_" in name or "classifier.modules_to_save" in name), name
    feed_forward = [n for n, p in result.model.named_parameters() if ".intermediate.dense.lora_" in n]
    assert bool(feed_forward) == (targets == "all-linear")


def test_learns_a_synthetic_preference(tiny_config, tmp_path) -> None:
    config = replace(tiny_config, epochs=4, eval_every=25, patience=4)
    result = train_reward_model(synthetic_pairs(400, seed=1), synthetic_pairs(100, seed=2), config,
                                out_dir=tmp_path, progress=False)
    assert result.dev_report is not None and result.dev_report.accuracy >= 0.95
    assert result.best_dev_accuracy == pytest.approx(result.dev_report.accuracy)
    assert result.history and all(h["dev_accuracy"] is not None for h in result.history)
    assert result.dev_report.by_source["synthetic"].n == 100
    assert result.n_truncated_train == 0 and result.pairs_per_second > 0
    assert result.dev_report.longer_wins_accuracy < 0.7  # not learnable from length alone


def test_same_seed_same_weights(tiny_config, tmp_path) -> None:
    config = replace(tiny_config, epochs=2, warmup_ratio=0.1, center_coef=0.01)
    pairs = synthetic_pairs(48)
    a = train_reward_model(pairs, [], config, out_dir=tmp_path / "a", progress=False).model.state_dict()
    b = train_reward_model(pairs, [], config, out_dir=tmp_path / "b", progress=False).model.state_dict()
    c = train_reward_model(pairs, [], replace(config, seed=1), out_dir=tmp_path / "c", progress=False)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)
    assert not torch.equal(a["classifier.weight"], c.model.state_dict()["classifier.weight"])


@pytest.mark.parametrize("lora", [False, True])
def test_resume_equals_uninterrupted(tiny_config, tmp_path, lora) -> None:
    config = replace(tiny_config, epochs=2, warmup_ratio=0.2, lora=lora, lora_r=4)
    pairs = synthetic_pairs(40)
    whole = train_reward_model(pairs, [], config, out_dir=tmp_path / "whole", progress=False)
    first = train_reward_model(pairs, [], config, out_dir=tmp_path / "split", progress=False, epochs_this_run=1)
    assert not first.finished and first.epochs_completed == 1
    rest = train_reward_model(pairs, [], config, out_dir=tmp_path / "split", progress=False, resume=True)
    assert rest.finished and rest.epochs_completed == 2 and rest.global_step == whole.global_step == 10
    expected = whole.model.state_dict()
    for name, value in rest.model.state_dict().items():
        torch.testing.assert_close(value, expected[name], rtol=1e-6, atol=1e-7)


def test_resume_refuses_another_config(tiny_config, tmp_path) -> None:
    pairs = synthetic_pairs(16)
    train_reward_model(pairs, [], tiny_config, out_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="learning_rate"):
        train_reward_model(pairs, [], replace(tiny_config, learning_rate=1e-4), out_dir=tmp_path, progress=False,
                           resume=True)
    with pytest.raises(ValueError, match="train pairs differ"):
        train_reward_model(synthetic_pairs(17), [], tiny_config, out_dir=tmp_path, progress=False, resume=True)
    with pytest.raises(ValueError, match="no checkpoint"):
        train_reward_model(pairs, [], tiny_config, out_dir=tmp_path / "none", progress=False, resume=True)


def test_early_stopping_keeps_the_best_weights(tiny_config, tmp_path) -> None:
    config = replace(tiny_config, epochs=50, eval_every=1, patience=2, learning_rate=1e-9)  # nothing improves
    result = train_reward_model(synthetic_pairs(32), synthetic_pairs(16, seed=5), config, out_dir=tmp_path,
                                progress=False)
    assert result.stopped_early and result.finished and result.global_step == 3
    assert result.best_step == 1 and len(result.history) == 3


def test_soft_labels_and_truncation_are_reported(tiny_config, tmp_path) -> None:
    pairs = synthetic_pairs(16)
    pairs[0] = replace(pairs[0], prompt=" ".join(["w3"] * 200))
    pairs[1] = replace(pairs[1], p=0.5)
    result = train_reward_model(pairs, pairs[:4], tiny_config, out_dir=tmp_path, progress=False)
    assert result.n_truncated_train == 1 and result.n_truncated_dev == 1
    assert result.dev_report.n == 3 and result.dev_report.n_ties == 1


def test_decoder_llm_trains(llama_dir, tiny_config, tmp_path) -> None:
    config = replace(tiny_config, base_model=str(llama_dir), batch_size=8)
    before = initial_params(config)
    result = train_reward_model(synthetic_pairs(8), synthetic_pairs(4, seed=3), config, out_dir=tmp_path,
                                progress=False)
    assert result.global_step == 1 and result.dev_report is not None
    assert not torch.equal(result.model.score.weight, before["score.weight"])


@pytest.mark.parametrize("lora", [False, True])
def test_gradient_checkpointing_computes_the_same_step(tiny_config, tmp_path, lora) -> None:
    config = replace(tiny_config, lora=lora, lora_r=4, batch_size=8, center_coef=0.01)
    pairs = synthetic_pairs(16)
    plain = train_reward_model(pairs, [], config, out_dir=tmp_path / "a", progress=False).model.state_dict()
    checkpointed = train_reward_model(pairs, [], replace(config, gradient_checkpointing=True), out_dir=tmp_path / "b",
                                      progress=False).model.state_dict()
    for name, value in checkpointed.items():
        torch.testing.assert_close(value, plain[name], rtol=1e-5, atol=1e-6)


def test_max_length_beyond_the_backbone_positions_is_refused_before_training(tiny_config, tmp_path) -> None:
    config = replace(tiny_config, max_length=1000)  # the tiny BERT has 128 positions
    with pytest.raises(ValueError, match="rm.max_length = 1000 is more than the backbone's 128 positions"):
        train_reward_model(synthetic_pairs(16), [], config, out_dir=tmp_path, progress=False)
    assert not list(tmp_path.iterdir())  # no checkpoint: refused before any step
    at_limit = replace(tiny_config, max_length=128)
    result = train_reward_model(synthetic_pairs(8), [], at_limit, out_dir=tmp_path, progress=False)
    assert result.global_step == 1  # the limit itself is fine
