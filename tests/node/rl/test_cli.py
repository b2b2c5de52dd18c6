"""CLI smoke runs of rl, best-of-n, generate and sft with tiny models (rl as a real subprocess)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from node.app import Node
from node.cli import main
from storage.records import Demonstration
from tests.node.rl.conftest import prompts


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "node"
    assert main(["--home", str(home), "init", "--name", "org-a"]) == 0
    with Node.open(home) as node:
        node.store.import_records([Demonstration(source="demos", prompt=p, response="good good " + p)
                                   for p in prompts(6)])
    return home


def test_rl_subprocess_smoke(home: Path, policy_dir: Path, rm_dir: Path, tmp_path: Path) -> None:
    prompt_file = tmp_path / "prompts.jsonl"
    prompt_file.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts(4)))
    out = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "node.cli", "--home", str(home), "rl", "--policy", str(policy_dir), "--reward",
         str(rm_dir), "--audit", str(rm_dir), "--algo", "ppo", "--steps", "2", "--batch-prompts", "2",
         "--max-new-tokens", "6", "--prompts", str(prompt_file), "--out", str(out), "--threads", "1",
         "--no-chat-template"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2]
    assert {"reward", "audit_reward", "kl", "response_length", "entropy", "clip_fraction", "value_loss"} <= set(log[0])
    assert (out / "policy" / "merged" / "config.json").is_file() and (out / "policy" / "adapter").is_dir()
    assert "<svg" in (out / "report.html").read_text()


def test_other_commands_in_process(home: Path, policy_dir: Path, rm_dir: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--home", str(home)]
    assert main([*base, "best-of-n", "--policy", str(policy_dir), "--reward", str(rm_dir), "--source", "demos",
                 "--n", "3", "--max-new-tokens", "5", "--out", str(tmp_path / "best.jsonl")]) == 0
    assert "best-of-3" in capsys.readouterr().out
    assert len((tmp_path / "best.jsonl").read_text().splitlines()) == 6

    assert main([*base, "generate", "--policy", str(policy_dir), "--source", "demos", "--n", "2",
                 "--max-new-tokens", "5", "--campaign", "round-1", "--out", str(tmp_path / "gen.jsonl")]) == 0
    out = capsys.readouterr().out
    rows = [json.loads(line) for line in (tmp_path / "gen.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(len(r["responses"]) == 2 for r in rows)
    assert rows[0]["responses"][0]["model"] == str(policy_dir)
    # The samples are in the store with their model, and the campaign holds every distinct within-prompt pair.
    n_distinct = sum(1 for r in rows if r["responses"][0]["text"] != r["responses"][1]["text"])
    assert n_distinct > 0  # a random tiny policy at temperature 1 does not repeat itself
    from node.app import Node
    from storage.hashing import prompt_id, response_id
    with Node.open(home) as node:
        ids = [response_id(prompt_id(r["prompt"]), x["text"]) for r in rows for x in r["responses"]]
        assert set(node.store.response_texts(ids)) == set(ids)
        if n_distinct:
            assert "campaign 'round-1'" in out
            assert node.store.get_campaign("round-1").name == "round-1"
            assert len(node.store.campaign_pair_texts("round-1")) == n_distinct
    if n_distinct:  # a campaign name in use is refused before anything is sampled
        assert main([*base, "generate", "--policy", str(policy_dir), "--source", "demos", "--n", "2",
                     "--max-new-tokens", "5", "--campaign", "round-1"]) == 2
        assert "campaign 'round-1' already exists; pick another --campaign name (nothing was sampled)" \
            in capsys.readouterr().err

    assert main([*base, "sft", "--policy", str(policy_dir), "--epochs", "2", "--lr", "1e-2",
                 "--out", str(tmp_path / "sft")]) == 0
    assert "sft on 6 demonstrations" in capsys.readouterr().out
    assert (tmp_path / "sft" / "merged" / "config.json").is_file()

    assert main([*base, "rl", "--policy", str(policy_dir), "--reward", "personal", "--steps", "1"]) == 2
    assert "no personal reward model" in capsys.readouterr().err
    assert main([*base, "rl", "--policy", str(policy_dir), "--reward", str(rm_dir), "--algo", "grpo",
                 "--group-size", "1", "--steps", "1"]) == 2
    assert "group_size" in capsys.readouterr().err


def test_rl_runs_twice_the_same(home: Path, policy_dir: Path, rm_dir: Path, tmp_path: Path) -> None:
    """Same seed, same run: the LoRA adapter and the value head are initialized from --seed too (they were
    drawn before the run seeded torch, so every step after the first differed between runs)."""
    prompt_file = tmp_path / "prompts.jsonl"
    prompt_file.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts(4)))

    def run(name: str, seed: int) -> list[dict[str, float]]:
        out = tmp_path / name
        assert main(["--home", str(home), "rl", "--policy", str(policy_dir), "--reward", str(rm_dir), "--algo", "ppo",
                     "--steps", "3", "--batch-prompts", "2", "--max-new-tokens", "6", "--prompts", str(prompt_file),
                     "--lr", "1e-2", "--seed", str(seed), "--out", str(out), "--threads", "1",
                     "--no-chat-template"]) == 0
        log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if not k.startswith("time")} for r in log]

    first, again, other = run("a", 0), run("b", 0), run("c", 1)
    assert first == again
    assert first != other


def test_sft_runs_twice_the_same(home: Path, policy_dir: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    def run(name: str, seed: int) -> str:
        assert main(["--home", str(home), "sft", "--policy", str(policy_dir), "--epochs", "2", "--lr", "1e-2",
                     "--seed", str(seed), "--out", str(tmp_path / name)]) == 0
        return capsys.readouterr().out.split(";")[0]  # "sft on 6 demonstrations: loss A -> B"

    first, again, other = run("a", 0), run("b", 0), run("c", 1)
    assert first == again
    assert first != other


def _prompt_file(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _fake_sampling(monkeypatch: pytest.MonkeyPatch, samples: dict[str, list[str]]) -> None:
    """generate without a model: `samples` maps each prompt to its responses."""
    import node.commands.rl as rl

    monkeypatch.setattr(rl, "_load", lambda *_args, **_kwargs: (None, None))
    monkeypatch.setattr(rl, "_sample", lambda _policy, _tok, prompts, _args: [samples[p] for p in prompts])


def test_generate_leaves_out_blank_and_nul_samples(home: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """An empty sample used to abort generate after all the sampling (the store refuses it), with --out
    already written; now it is left out of --out and the store, and the rest is stored."""
    from storage.hashing import prompt_id, response_id

    _fake_sampling(monkeypatch, {"good cat": ["good", "", "bad"], "bad dog": [" \n", "a\x00b", "  "]})
    out = tmp_path / "gen.jsonl"
    prompt_file = _prompt_file(tmp_path, ["good cat", "bad dog"])
    assert main(["--home", str(home), "generate", "--prompts", str(prompt_file), "--n", "3", "--campaign",
                 "c1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "left out 4 of 6 samples: empty, only whitespace or holding a NUL character" in printed
    assert "stored 2 distinct responses to 1 prompts" in printed and "campaign 'c1' has 1 pairs" in printed
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["prompt"], [x["text"] for x in r["responses"]]) for r in rows] == \
        [("good cat", ["good", "bad"])]
    with Node.open(home) as node:
        ids = [response_id(prompt_id("good cat"), t) for t in ("good", "bad")]
        assert set(node.store.response_texts(ids)) == set(ids)
        assert node.store.get_campaign("c1").pairs == 1


def test_generate_with_only_blank_samples_stores_nothing(home: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    _fake_sampling(monkeypatch, {"good cat": ["", " "]})
    out = tmp_path / "gen.jsonl"
    assert main(["--home", str(home), "generate", "--prompts", str(_prompt_file(tmp_path, ["good cat"])),
                 "--n", "2", "--campaign", "c1", "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("rewardnode: error: all 2 samples were empty") and "--max-new-tokens" in err
    assert not out.exists()
    with Node.open(home) as node:
        assert node.store.list_campaigns() == []


def test_generate_counts_distinct_responses_and_the_campaigns_pairs(
        home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A prompt given twice and a repeated sample used to give duplicate pairs and a count of prompts x n."""
    _fake_sampling(monkeypatch, {"good cat": ["x", "y", "x", "z"], "bad dog": ["u", "v", "u", "u"]})
    prompt_file = _prompt_file(tmp_path, ["good cat", "bad dog", "good cat"])
    assert main(["--home", str(home), "generate", "--prompts", str(prompt_file), "--n", "4",
                 "--campaign", "c1"]) == 0
    printed = capsys.readouterr().out
    # good cat: x, y, z -> 3 pairs; bad dog: u, v -> 1 pair
    assert "stored 5 distinct responses to 3 prompts (of 12 sampled" in printed
    assert "campaign 'c1' has 4 pairs to label" in printed
    with Node.open(home) as node:
        assert node.store.get_campaign("c1").pairs == 4


def test_sampling_commands_and_sft_keep_no_reference_copy(home: Path, policy_dir: Path, rm_dir: Path,
                                                          tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """best-of-n, generate and sft --full used to deep-copy the policy as a frozen reference they never
    use."""
    import node.commands.rl as rl
    import node.rl.sft

    seen: list[object] = []
    real_sample, real_sft = rl._sample, node.rl.sft.train_sft

    def sample(policy, *args):  # type: ignore[no-untyped-def]
        seen.append(policy)
        return real_sample(policy, *args)

    def train_sft(policy, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(policy)
        return real_sft(policy, *args, **kwargs)

    monkeypatch.setattr(rl, "_sample", sample)
    monkeypatch.setattr(node.rl.sft, "train_sft", train_sft)
    base = ["--home", str(home)]
    sampling = ["--policy", str(policy_dir), "--source", "demos", "--limit", "2", "--n", "2",
                "--max-new-tokens", "3"]
    assert main([*base, "best-of-n", *sampling, "--reward", str(rm_dir)]) == 0
    assert main([*base, "generate", *sampling]) == 0
    assert main([*base, "sft", "--policy", str(policy_dir), "--full", "--out", str(tmp_path / "sft")]) == 0
    assert len(seen) == 3
    for policy in seen:
        assert policy.ref is None and policy.value_head is None  # type: ignore[attr-defined]
        assert sum(p.numel() for p in policy.parameters()) == \
            sum(p.numel() for p in policy.lm.parameters())  # type: ignore[attr-defined]
    assert (tmp_path / "sft" / "merged" / "config.json").is_file()
    assert not (tmp_path / "sft" / "adapter").exists()


def _rl_args(home: Path, policy_dir: Path, rm_dir: Path, tmp_path: Path, *extra: str) -> list[str]:
    prompt_file = tmp_path / "prompts.jsonl"
    prompt_file.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts(4)))
    return ["--home", str(home), "rl", "--policy", str(policy_dir), "--reward", str(rm_dir),
            "--batch-prompts", "2", "--max-new-tokens", "4", "--prompts", str(prompt_file), "--threads", "1",
            "--no-chat-template", *extra]


def test_rl_interrupted_saves_the_completed_steps(home: Path, policy_dir: Path, rm_dir: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """Ctrl-C in step 3 used to lose the run: now the policy of step 2, summary.json and report.html are
    saved."""
    import node.rl.ppo as ppo

    real, calls = ppo.sample, [0]

    def sample(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls[0] += 1
        if calls[0] == 3:
            raise KeyboardInterrupt  # as Ctrl-C while step 3 samples
        return real(*args, **kwargs)

    monkeypatch.setattr(ppo, "sample", sample)
    out = tmp_path / "run"
    assert main(_rl_args(home, policy_dir, rm_dir, tmp_path, "--steps", "5", "--out", str(out))) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"rewardnode: error: interrupted in step 3; saved the policy as of step 2 in "
                       f"{out / 'policy' / 'merged'}, with summary.json and report.html in {out}")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] is True and summary["interrupted_step"] == 3 and summary["steps_run"] == 2
    assert (out / "policy" / "merged" / "config.json").is_file() and (out / "policy" / "adapter").is_dir()
    assert "<svg" in (out / "report.html").read_text()
    assert len((out / "log.jsonl").read_text().splitlines()) == 2


def test_rl_interrupted_again_while_saving_exits_at_once(home: Path, policy_dir: Path, rm_dir: Path,
                                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    import node.rl.policy
    import node.rl.ppo as ppo

    real, calls = ppo.sample, [0]

    def sample(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls[0] += 1
        if calls[0] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    def save_policy(*_args, **_kwargs):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt  # the second Ctrl-C

    monkeypatch.setattr(ppo, "sample", sample)
    monkeypatch.setattr(node.rl.policy, "save_policy", save_policy)
    out = tmp_path / "run"
    assert main(_rl_args(home, policy_dir, rm_dir, tmp_path, "--steps", "3", "--out", str(out))) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"rewardnode: error: interrupted again while saving; {out} may hold a partial policy: "
                       "delete it")
    assert not (out / "summary.json").exists()


def _sigint_in_step_2s_update(monkeypatch: pytest.MonkeyPatch, presses: int) -> None:
    """Ctrl-C `presses` times after step 2's first optimizer step (`rl`: 2 epochs x 2 minibatches)."""
    import node.rl.ppo as ppo

    real, calls = ppo.clipped_policy_loss, [0]

    def loss(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls[0] += 1
        if calls[0] == 4 + 2:
            for _ in range(presses):
                signal.raise_signal(signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(ppo, "clipped_policy_loss", loss)


def test_rl_ctrl_c_during_an_update_saves_that_step(home: Path, policy_dir: Path, rm_dir: Path,
                                                    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    _sigint_in_step_2s_update(monkeypatch, presses=1)
    out = tmp_path / "run"
    args = _rl_args(home, policy_dir, rm_dir, tmp_path, "--full", "--steps", "4", "--out", str(out))
    assert main(args) == 130
    err = capsys.readouterr().err
    assert err.count("Ctrl-C: stopping after this step's update (press Ctrl-C again to stop now without "
                     "saving this run's policy)") == 1
    assert err.strip().splitlines()[-1] == (
        f"rewardnode: error: interrupted in step 3; saved the policy as of step 2 in "
        f"{out / 'policy' / 'merged'}, with summary.json and report.html in {out}")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps_run"] == 2 and summary["policy_saved"] is True and summary["interrupted_step"] == 3
    assert (out / "policy" / "merged" / "config.json").is_file()
    assert len((out / "log.jsonl").read_text().splitlines()) == 2
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_rl_a_second_ctrl_c_mid_update_saves_no_policy(home: Path, policy_dir: Path, rm_dir: Path,
                                                       tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """The weights are half-updated: saving them as `the policy as of step 1` would be a lie."""
    _sigint_in_step_2s_update(monkeypatch, presses=2)
    out = tmp_path / "run"
    args = _rl_args(home, policy_dir, rm_dir, tmp_path, "--full", "--steps", "4", "--out", str(out))
    assert main(args) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == ("rewardnode: error: interrupted in step 2; the policy was not saved because it was "
                       "stopped mid-update (its weights match no step); summary.json and report.html of "
                       f"the 1 completed steps are in {out}")
    assert not (out / "policy").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["policy_saved"] is False and summary["interrupted"] is True
    assert summary["steps_run"] == 1 and summary["interrupted_step"] == 2 and "merged" not in summary
    assert len((out / "log.jsonl").read_text().splitlines()) == 1
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_rl_refuses_a_folder_that_is_not_a_reward_model(home: Path, policy_dir: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """The policy's own folder as --reward used to load a random 2-label head and crash mid-run."""
    out = tmp_path / "run"
    assert main(_rl_args(home, policy_dir, policy_dir, tmp_path, "--steps", "1", "--out", str(out))) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        f"rewardnode: error: --reward {policy_dir}: {policy_dir} holds a LlamaForCausalLM, not a reward "
        "model; pass a reward-model folder")
    assert not out.exists()
    assert main(["--home", str(home), "best-of-n", "--policy", str(policy_dir), "--reward", str(policy_dir),
                 "--source", "demos"]) == 2
    assert "not a reward model" in capsys.readouterr().err
