"""The PPO/GRPO/RLOO math against naive loops and hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from node.rl.config import RLConfig
from node.rl.generate import best_of_n, response_mask
from node.rl.guards import AuditMonitor, KLController, kl_budget, shape_scores
from node.rl.ppo import clipped_policy_loss, clipped_value_loss, gae, group_advantages, kl_per_token, whiten


def naive_gae(rewards: list[float], values: list[float], gamma: float, lam: float) -> tuple[list[float], list[float]]:
    n = len(rewards)
    adv = [0.0] * n
    for t in range(n):
        total = 0.0
        for k in range(t, n):
            next_v = values[k + 1] if k + 1 < n else 0.0
            delta = rewards[k] + gamma * next_v - values[k]
            total += (gamma * lam) ** (k - t) * delta
        adv[t] = total
    return adv, [a + v for a, v in zip(adv, values, strict=True)]


def test_gae_equals_a_naive_loop_with_ragged_lengths() -> None:
    torch.manual_seed(0)
    rewards, values = torch.randn(3, 6), torch.randn(3, 6)
    lengths = [6, 4, 1]
    mask = torch.tensor([[1.0 if t < n else 0.0 for t in range(6)] for n in lengths])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    for i, n in enumerate(lengths):
        expect_adv, expect_ret = naive_gae(rewards[i, :n].tolist(), values[i, :n].tolist(), 0.9, 0.8)
        torch.testing.assert_close(adv[i, :n], torch.tensor(expect_adv), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ret[i, :n], torch.tensor(expect_ret), rtol=1e-5, atol=1e-5)
        assert adv[i, n:].abs().sum() == 0 and ret[i, n:].abs().sum() == 0


def test_clipped_losses_equal_a_hand_computation() -> None:
    old = torch.tensor([[0.0, 0.0, 0.0]])
    new = torch.tensor([[math.log(1.5), math.log(0.5), math.log(1.1)]])  # ratios 1.5, 0.5, 1.1
    adv = torch.tensor([[1.0, 1.0, -2.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0]])
    loss, clipfrac = clipped_policy_loss(new, old, adv, mask, clip_eps=0.2)
    # token 1: max(-1.5, -1.2) = -1.2 (clipped); token 2: max(-0.5, -0.8) = -0.5; token 3: max(2.2, 2.2) = 2.2
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 2.2) / 3, abs=1e-6)
    assert clipfrac.item() == pytest.approx(1 / 3)
    # masking the last token drops it from the mean
    loss2, _ = clipped_policy_loss(new, old, adv, torch.tensor([[1.0, 1.0, 0.0]]), clip_eps=0.2)
    assert loss2.item() == pytest.approx((-1.2 - 0.5) / 2, abs=1e-6)

    values, old_values, returns = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.5, 0.0]]), torch.tensor([[2.0, 1.0]])
    v_loss = clipped_value_loss(values, old_values, returns, torch.ones(1, 2), clip=0.2)
    # token 1: unclipped (1-2)^2 = 1, clipped V = 0.7 -> (0.7-2)^2 = 1.69; token 2: 1 and 1
    assert v_loss.item() == pytest.approx(0.5 * (1.69 + 1.0) / 2, abs=1e-6)


def test_group_advantages_grpo_and_rloo() -> None:
    s = torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 5.0])
    grpo = group_advantages(s, 3, "grpo")
    torch.testing.assert_close(grpo[:3], torch.tensor([-1.0, 0.0, 1.0]), atol=1e-4, rtol=0)
    assert grpo[3:].abs().max() == 0  # identical scores: no signal
    rloo = group_advantages(s, 3, "rloo")
    torch.testing.assert_close(rloo[:3], torch.tensor([1 - 2.5, 2 - 2.0, 3 - 1.5]))


def test_kl_estimators_and_whitening() -> None:
    logp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])
    torch.testing.assert_close(kl_per_token(logp, ref, "k1"), torch.tensor([0.5, -1.0]))
    r = ref - logp
    torch.testing.assert_close(kl_per_token(logp, ref, "k3"), torch.exp(r) - 1 - r)
    assert (kl_per_token(logp, ref, "k3") >= 0).all()
    w = whiten(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert abs(w.mean().item()) < 1e-6 and w.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-4)


def test_response_mask_stops_after_the_first_eos() -> None:
    eos = 9
    responses = torch.tensor([[1, 2, 9, 9], [1, 2, 3, 4], [9, 9, 9, 9]])
    mask, has_eos, lengths = response_mask(responses, [eos])
    assert mask.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert has_eos.tolist() == [True, False, True] and lengths.tolist() == [3, 4, 1]
    assert best_of_n([["a", "b"], ["c"]], [0.0, 1.0, 3.0]) == [(1, 1.0), (0, 3.0)]


def test_guards_shape_scores_and_control_kl() -> None:
    config = RLConfig(length_penalty=0.1, length_free_tokens=2, missing_eos_penalty=1.0, disagreement_coef=0.5)
    shaped, stats = shape_scores(torch.tensor([1.0, 1.0]), torch.tensor([2, 5]), torch.tensor([True, False]),
                                 torch.tensor([0.0, 2.0]), config)
    torch.testing.assert_close(shaped, torch.tensor([1.0, 1.0 - 0.3 - 1.0 - 1.0]))
    assert stats["guard/eos_penalty"] == pytest.approx(0.5)
    ctl = KLController(0.1, target=1.0, horizon=10)
    ctl.update(kl=5.0, n=10)  # error clipped to +0.2
    assert ctl.value == pytest.approx(0.12)
    assert kl_budget(9.0, ctl, RLConfig(kl_budget=8.0, kl_budget_action="adapt")) is None and ctl.value == 0.24
    assert "budget" in str(kl_budget(9.0, ctl, RLConfig(kl_budget=8.0, kl_budget_action="stop")))
    monitor = AuditMonitor(window=2, patience=2)
    fired = [monitor.update(train, audit) for train, audit in [(0, 1), (0, 1), (1, 0), (2, -1), (3, -2), (4, -3)]]
    assert fired == [False, False, False, False, True, True]  # two strikes in a row from step 4


def test_config_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="group_size"):
        RLConfig(algo="grpo", group_size=1)
    with pytest.raises(ValueError, match="minibatches"):
        RLConfig(batch_prompts=3, num_minibatches=2)
    with pytest.raises(ValueError, match="unknown keys"):
        RLConfig.from_mapping({"stpes": 3})
    assert RLConfig.from_mapping({"steps": 3}, steps=None, algo="rloo", group_size=2).steps == 3


@pytest.mark.parametrize(("settings", "field", "allowed"), [
    ({"steps": "many"}, "steps", "must be a whole number"),
    ({"steps": True}, "steps", "must be a whole number"),
    ({"learning_rate": -1.0}, "learning_rate", "must be > 0"),
    ({"learning_rate": math.inf}, "learning_rate", "must be a finite number"),
    ({"top_p": 5.0}, "top_p", "must lie in (0, 1]"),
    ({"top_k": -3}, "top_k", "must be >= 0"),
    ({"kl_coef": -1.0}, "kl_coef", "must be >= 0"),
    ({"kl_budget": -5.0}, "kl_budget", "must be >= 0"),
    ({"target_kl": 0.0}, "target_kl", "must be > 0"),
    ({"length_free_tokens": -4}, "length_free_tokens", "must be >= 0"),
    ({"lora_r": 0}, "lora_r", "must be >= 1"),
    ({"lora_dropout": 1.0}, "lora_dropout", "must lie in [0, 1)"),
    ({"num_threads": -1}, "num_threads", "must be >= 0"),
    ({"clip_eps": 0.0}, "clip_eps", "must lie in (0, 1)"),
    ({"adaptive_kl": "yes"}, "adaptive_kl", "must be true or false"),
    ({"algo": "dpo"}, "algo", "must be one of ppo, grpo, rloo"),
])
def test_config_checks_every_field_type_and_range(settings: dict[str, object], field: str,
                                                  allowed: str) -> None:
    from node.rl.config import InvalidRLSetting

    with pytest.raises(InvalidRLSetting) as raised:
        RLConfig.from_mapping(settings)
    assert raised.value.field == field and raised.value.allowed.startswith(allowed)
    assert str(raised.value).startswith(f"[rl] {field} = ") and "the default is" in str(raised.value)


def test_config_checks_table_and_flags_merged() -> None:
    """A flag overrides a bad node.toml value rather than the table failing on its own first."""
    assert RLConfig.from_mapping({"steps": "many", "algo": "grpo"}, steps=5, group_size=2).steps == 5
    assert RLConfig(top_p=1, temperature=2, learning_rate=1).top_p == 1  # TOML integers are numbers too
