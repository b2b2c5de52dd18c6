"""CLI smoke runs of rl, best-of-n, generate and sft with tiny models (rl as a real subprocess)."""

from __future__ import annotations

import json
import os
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
