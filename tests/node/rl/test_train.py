"""End-to-end RL on tiny models: rewards rise, KL stays in budget, text crosses tokenizers, the audit stop fires."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import pytest
import torch

from node.rl.config import RLConfig
from node.rl.policy import PolicyWithValue, load_policy, save_policy
from node.rl.ppo import TrainingInterrupted, train
from node.rl.rewards import EnsembleReward, FunctionReward, ModelReward
from tests.node.rl.conftest import TARGET, count_target, prompts


def _policy(policy_dir: Path, algo: str) -> tuple[PolicyWithValue, object]:
    model, tokenizer = load_policy(policy_dir)
    torch.manual_seed(0)  # the value head's initialization, whatever tests ran before
    return PolicyWithValue(model, lora=False, value_head=algo == "ppo"), tokenizer


def _mean(history: list[dict[str, float]], key: str, sl: slice) -> float:
    values = [h[key] for h in history[sl]]
    return sum(values) / len(values)


@pytest.mark.parametrize("algo", ["ppo", "grpo"])
def test_toy_reward_rises_while_kl_stays_in_budget(policy_dir: Path, algo: str) -> None:
    policy, tokenizer = _policy(policy_dir, algo)
    before = {n: p.detach().clone() for n, p in policy.lm.named_parameters()}
    config = RLConfig(algo=algo, steps=30, batch_prompts=8 if algo == "ppo" else 4, group_size=1 if algo == "ppo" else 4,
                      max_new_tokens=12, learning_rate=1.5e-3 if algo == "ppo" else 1e-3,
                      kl_coef=0.05 if algo == "ppo" else 0.1, missing_eos_penalty=0.0,
                      chat_template=False, kl_budget=15.0, kl_budget_action="stop")
    result = train(policy, tokenizer, count_target, prompts(), config)
    assert result.stopped is None, result.stopped  # never over the KL budget
    assert max(h["kl"] for h in result.history) < config.kl_budget
    first, last = _mean(result.history, "reward", slice(0, 5)), _mean(result.history, "reward", slice(-5, None))
    assert last > first + 0.05, (first, last)
    assert any(not torch.equal(before[n], p) for n, p in policy.lm.named_parameters())
    assert all(key in result.history[-1] for key in ("entropy", "clip_fraction", "value_loss", "response_length"))


def test_rloo_and_lora_run_and_save(policy_dir: Path, tmp_path: Path) -> None:
    model, tokenizer = load_policy(policy_dir)
    policy = PolicyWithValue(model, lora=True, lora_r=4, lora_alpha=8, value_head=False)
    config = RLConfig(algo="rloo", steps=2, batch_prompts=2, group_size=2, max_new_tokens=6, chat_template=False)
    result = train(policy, tokenizer, count_target, prompts(4), config)
    assert len(result.history) == 2
    paths = save_policy(policy, tokenizer, tmp_path / "out")
    reloaded, _ = load_policy(paths["merged"])
    ids = torch.tensor([[1, 5, 6]])
    torch.testing.assert_close(reloaded(ids).logits, policy.merged()(ids).logits)
    assert (tmp_path / "out" / "adapter" / "adapter_config.json").is_file()


def test_cross_tokenizer_reward_scores_decoded_text(policy_dir: Path, rm_dir: Path) -> None:
    policy, tokenizer = _policy(policy_dir, "ppo")
    rm = ModelReward(rm_dir)
    assert rm.scorer.tokenizer.vocab_size != tokenizer.vocab_size  # different vocabularies on purpose
    seen: list[list[str]] = []

    class Spy(ModelReward):
        def score(self, p, r):  # type: ignore[no-untyped-def]
            seen.append(list(r))
            return super().score(p, r)

    spy = Spy(rm_dir)
    config = RLConfig(steps=2, batch_prompts=4, max_new_tokens=8, chat_template=False)
    result = train(policy, tokenizer, spy, prompts(4), config, audit=rm)
    assert len(result.history) == 2 and "audit_reward" in result.history[0]
    assert all(isinstance(t, str) for t in seen[0]) and any(t.strip() for batch in seen for t in batch)
    direct = rm.score(["x"] * len(seen[0]), seen[0]).scores
    assert len(direct) == 4 and all(isinstance(s, float) for s in direct)


def test_audit_stop_fires_on_a_hacked_reward(policy_dir: Path) -> None:
    policy, tokenizer = _policy(policy_dir, "ppo")

    def audit(_p: list[str], responses: list[str]) -> list[float]:  # the audit RM hates what the proxy loves
        return [-r.split().count(TARGET) / max(len(r.split()), 1) for r in responses]

    config = RLConfig(steps=40, batch_prompts=8, max_new_tokens=12, learning_rate=3e-3, kl_coef=0.02,
                      missing_eos_penalty=0.0, chat_template=False, kl_budget=0.0, audit_window=4, audit_patience=2)
    result = train(policy, tokenizer, count_target, prompts(), config, audit=audit)
    assert result.stopped is not None and "audit stop" in result.stopped
    assert len(result.history) < config.steps
    assert result.history[-1].get("audit_alarm") == 1.0


def test_audit_stop_fires_with_an_ensemble_reward(policy_dir: Path) -> None:
    """An ensemble's standardized scores average 0 over every batch: logged as the training reward, it never
    rose, so the audit guard could not fire. The log shows the members' raw mean, and the guard fires."""
    policy, tokenizer = _policy(policy_dir, "ppo")

    def scaled(p: list[str], r: list[str]) -> list[float]:  # a second member on another scale
        return [2.0 * x + 1.0 for x in count_target(p, r)]

    def audit(_p: list[str], responses: list[str]) -> list[float]:
        return [-r.split().count(TARGET) / max(len(r.split()), 1) for r in responses]

    ensemble = EnsembleReward([FunctionReward(count_target, "count"), FunctionReward(scaled, "scaled")])
    config = RLConfig(steps=40, batch_prompts=8, max_new_tokens=12, learning_rate=3e-3, kl_coef=0.02,
                      missing_eos_penalty=0.0, chat_template=False, kl_budget=0.0, audit_window=4,
                      audit_patience=2, disagreement_coef=0.0)
    result = train(policy, tokenizer, ensemble, prompts(), config, audit=audit)
    rewards = [h["reward"] for h in result.history]
    assert all(r >= 0.5 for r in rewards)  # (c + 2c + 1) / 2 = 1.5 c + 0.5, not the standardized 0
    assert result.stopped is not None and "audit stop" in result.stopped
    assert result.history[-1].get("audit_alarm") == 1.0


def _trainable(policy: PolicyWithValue) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}


_INTERRUPT_CONFIG = {"steps": 3, "batch_prompts": 4, "max_new_tokens": 6, "learning_rate": 1e-2,
                     "chat_template": False}


def _ctrl_c_in_update(monkeypatch: pytest.MonkeyPatch, config: RLConfig, presses: int,
                      signal_it: bool = True) -> list[int]:
    """Ctrl-C `presses` times in step 2, after its first optimizer step changed the weights (a real SIGINT in
    this, the main thread, or a bare KeyboardInterrupt); returns the counter of minibatch losses."""
    import node.rl.ppo as ppo

    per_step = config.ppo_epochs * config.num_minibatches  # minibatch updates per step
    real, calls = ppo.clipped_policy_loss, [0]

    def loss_then_ctrl_c(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls[0] += 1
        if calls[0] == per_step + 2:
            for _ in range(presses):
                if not signal_it:
                    raise KeyboardInterrupt
                signal.raise_signal(signal.SIGINT)  # the handler runs before this returns
        return real(*args, **kwargs)

    monkeypatch.setattr(ppo, "clipped_policy_loss", loss_then_ctrl_c)
    return calls


def test_no_copy_of_the_trainable_weights_is_taken_per_step(policy_dir: Path) -> None:
    """Ctrl-C safety used to copy every trainable weight to the CPU before each step's update: the whole
    model, every step, with --full. No op may copy a trainable weight's values during a run."""
    from torch.utils._python_dispatch import TorchDispatchMode

    policy, tokenizer = _policy(policy_dir, "ppo")
    weights = {p.untyped_storage().data_ptr() for p in policy.trainable_parameters()}
    copy_ops = {torch.ops.aten._to_copy.default, torch.ops.aten.clone.default, torch.ops.aten.copy_.default,
                torch.ops.aten.lift_fresh_copy.default}

    seen: list[str] = []

    class Copies(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            source = args[1] if func is torch.ops.aten.copy_.default else args[0] if args else None
            if func in copy_ops and isinstance(source, torch.Tensor) and \
                    source.untyped_storage().data_ptr() in weights:
                seen.append(str(func))
            return func(*args, **(kwargs or {}))

    with Copies():
        result = train(policy, tokenizer, count_target, prompts(4), RLConfig(**_INTERRUPT_CONFIG))
    assert len(result.history) == 3
    assert seen == []  # the old per-step backup: aten._to_copy of each of the 23 weights, every step


def test_ctrl_c_during_the_update_finishes_and_logs_the_step_then_stops(
        policy_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    config = RLConfig(**_INTERRUPT_CONFIG)
    policy, tokenizer = _policy(policy_dir, "ppo")
    _ctrl_c_in_update(monkeypatch, config, presses=1)
    logged: list[int] = []
    with pytest.raises(TrainingInterrupted) as caught:
        train(policy, tokenizer, count_target, prompts(4), config,
              on_step=lambda log: logged.append(int(log["step"])))
    assert isinstance(caught.value, KeyboardInterrupt)  # uncaught, it ends a program like Ctrl-C
    assert caught.value.consistent and [h["step"] for h in caught.value.result.history] == [1, 2]
    assert logged == [1, 2]  # on_step saw step 2 before the interrupt
    assert capsys.readouterr().err.count("Ctrl-C: stopping after this step's update") == 1
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

    monkeypatch.undo()  # the same seed for 2 steps, uninterrupted: the same weights
    uninterrupted, _ = _policy(policy_dir, "ppo")
    train(uninterrupted, tokenizer, count_target, prompts(4), RLConfig(**{**_INTERRUPT_CONFIG, "steps": 2}))
    expected, now = _trainable(uninterrupted), _trainable(policy)
    assert now.keys() == expected.keys()
    for name, weights in expected.items():
        torch.testing.assert_close(now[name], weights, rtol=0, atol=0)


def test_ctrl_c_during_the_last_steps_update_ends_the_run_as_usual(
        policy_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Every step is done once the last one is logged: the run completes (no step left to interrupt)."""
    config = RLConfig(**{**_INTERRUPT_CONFIG, "steps": 2})
    policy, tokenizer = _policy(policy_dir, "ppo")
    _ctrl_c_in_update(monkeypatch, config, presses=1)
    result = train(policy, tokenizer, count_target, prompts(4), config)
    assert [h["step"] for h in result.history] == [1, 2] and result.stopped is None
    assert capsys.readouterr().err.count("Ctrl-C: stopping after this step's update") == 1
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize("signal_it", [True, False], ids=["second-sigint", "keyboard-interrupt"])
def test_a_second_ctrl_c_during_the_update_stops_at_once_inconsistent(
        policy_dir: Path, monkeypatch: pytest.MonkeyPatch, signal_it: bool) -> None:
    """Two SIGINTs, or a KeyboardInterrupt from anywhere else mid-update: the weights match no step."""
    config = RLConfig(**_INTERRUPT_CONFIG)
    policy, tokenizer = _policy(policy_dir, "ppo")
    calls = _ctrl_c_in_update(monkeypatch, config, presses=2 if signal_it else 1, signal_it=signal_it)
    logged: list[int] = []
    with pytest.raises(TrainingInterrupted) as caught:
        train(policy, tokenizer, count_target, prompts(4), config,
              on_step=lambda log: logged.append(int(log["step"])))
    assert not caught.value.consistent and "mid-update" in str(caught.value)
    assert [h["step"] for h in caught.value.result.history] == [1] and logged == [1]
    assert calls[0] == config.ppo_epochs * config.num_minibatches + 2  # no further minibatch ran
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_during_generation_interrupts_at_once(policy_dir: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import node.rl.ppo as ppo

    policy, tokenizer = _policy(policy_dir, "ppo")
    real, calls, after = ppo.sample, [0], []

    def sample(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls[0] += 1
        if calls[0] == 2:
            signal.raise_signal(signal.SIGINT)  # Ctrl-C while step 2 samples
            raise AssertionError("the SIGINT did not interrupt the sampling")
        return real(*args, **kwargs)

    monkeypatch.setattr(ppo, "sample", sample)
    with pytest.raises(TrainingInterrupted) as caught:
        train(policy, tokenizer, count_target, prompts(4), RLConfig(**_INTERRUPT_CONFIG),
              on_step=lambda _log: after.append(_trainable(policy)))
    assert caught.value.consistent and [h["step"] for h in caught.value.result.history] == [1]
    now = _trainable(policy)
    for name, weights in after[0].items():
        torch.testing.assert_close(now[name], weights, rtol=0, atol=0)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_sigint_handler_someone_installed_is_left_alone_and_restored(
        policy_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not Python's default handler: no holding off, their handler sees the SIGINT mid-update, and stays."""
    config = RLConfig(**_INTERRUPT_CONFIG)
    policy, tokenizer = _policy(policy_dir, "ppo")
    _ctrl_c_in_update(monkeypatch, config, presses=1)
    seen: list[int] = []

    def theirs(signum: int, _frame: object) -> None:
        seen.append(signum)

    previous = signal.signal(signal.SIGINT, theirs)
    try:
        result = train(policy, tokenizer, count_target, prompts(4), config)
        assert signal.getsignal(signal.SIGINT) is theirs
    finally:
        signal.signal(signal.SIGINT, previous)
    assert seen == [signal.SIGINT] and len(result.history) == 3


def test_train_in_another_thread_runs_without_touching_signals(policy_dir: Path) -> None:
    """signal.signal raises ValueError outside the main thread; KeyboardInterrupt cannot arrive there."""
    policy, tokenizer = _policy(policy_dir, "ppo")
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(train(policy, tokenizer, count_target, prompts(4),
                                 RLConfig(**{**_INTERRUPT_CONFIG, "steps": 2})))
        except BaseException as e:  # noqa: BLE001 - reported to the main thread
            outcome.append(e)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    [result] = outcome
    assert not isinstance(result, BaseException), result
    assert len(result.history) == 2  # type: ignore[attr-defined]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_policy_without_reference_is_the_bare_model(policy_dir: Path, tmp_path: Path) -> None:
    model, tokenizer = load_policy(policy_dir)
    policy = PolicyWithValue(model, lora=False, value_head=False, reference=False)
    assert policy.ref is None and policy.value_head is None and not policy.is_lora
    assert sum(p.numel() for p in policy.parameters()) == sum(p.numel() for p in model.parameters())
    with pytest.raises(ValueError, match="built without a reference"):
        policy.ref_logits(torch.tensor([[1, 5]]), torch.ones(1, 2, dtype=torch.long))
    paths = save_policy(policy, tokenizer, tmp_path / "out")
    assert set(paths) == {"merged"} and (tmp_path / "out" / "merged" / "config.json").is_file()


def test_sampling_reports_each_batch_and_keeps_the_order(policy_dir: Path) -> None:
    from node.rl.generate import sample_texts

    model, tokenizer = load_policy(policy_dir)
    done: list[int] = []
    texts = sample_texts(model, tokenizer, prompts(5), 3, max_new_tokens=4, batch_size=4, chat_template=False,
                         on_batch=done.append)
    assert [len(group) for group in texts] == [3] * 5
    assert done == [4, 4, 4, 3]  # 15 responses in batches of 4
