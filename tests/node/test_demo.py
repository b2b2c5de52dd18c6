"""`python -m node.demo --quick` end to end, as `make demo QUICK=1` runs it: three node homes with private
and federated reward models (the federated one verifies on every node), a PPO log, the ONNX export
(int8, or the gate's refusal reported and fp32 written instead), the final table and the HTML report.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(400)
ORGS = ("org-a", "org-b", "org-c")


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "node.cli", "--home", str(home), *args], capture_output=True,
                          text=True, timeout=120)


def test_quick_demo_runs_every_step(tmp_path: Path) -> None:
    demo = tmp_path / "demo"
    env = {**os.environ, "REWARDNODE_DEMO_DIR": str(demo), "HF_HUB_OFFLINE": "1", "FLWR_TELEMETRY_ENABLED": "0",
           "FLWR_DISABLE_UPDATE_CHECK": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "node.demo", "--quick"], capture_output=True, text=True, env=env,
                          timeout=380, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout

    # every step is shown as the command it runs, the engine is named
    for command in ("init --name org-a", "import", "aggregate", "train --base", "peers add", "federation create",
                    "federation run demo-fed --engine local", "verify", "eval --model", "rl --policy",
                    "export --model"):
        assert f" {command}" in out, command
    assert "engine: in-process" in out

    results = json.loads((demo / "demo_results.json").read_text())
    fed_ids = set()
    for org in ORGS:
        home = demo / org
        assert (home / "store.db").is_file() and (home / "identity.key").is_file()
        models = json.loads(_cli(home, "models", "--json").stdout)
        kinds = {m["kind"] for m in models}
        assert {"personal", "federated"} <= kinds, models
        [fed] = [m for m in models if m["kind"] == "federated"]
        verified = _cli(home, "verify", fed["id"], "--json")
        assert verified.returncode == 0, verified.stderr
        report = json.loads(verified.stdout)
        assert report["rounds"] == 3 and len(report["contributors"]) == 3
        fed_ids.add(fed["id"])
        join = json.loads((home / "federation" / "demo-fed" / "join.json").read_text()) if org != "org-a" else {}
        assert org == "org-a" or join["learned_via"] == "gossip"
    assert len(fed_ids) == 1

    # the private models stay private: each home registers only its own personal model
    personal = {org: [m["path"] for m in json.loads(_cli(demo / org, "models", "--json").stdout)
                      if m["kind"] == "personal"] for org in ORGS}
    for org, paths in personal.items():
        assert len(paths) == 1 and paths[0].startswith(str(demo / org))

    log = [json.loads(line) for line in (demo / "org-a" / "rl" / "demo-ppo" / "log.jsonl").read_text().splitlines()]
    assert len(log) == 3 and all("audit_reward" in r and "kl" in r for r in log)

    export = results["export"]
    if export["ok"]:
        assert list((demo / "export" / "federated-int8").glob("*int8*.onnx")), "int8 export missing"
        assert "int8 fidelity gate PASSED" in out
    else:  # the gate refused: said so, nothing forced, fp32 written instead
        assert "int8 fidelity gate failed" in out + done.stderr and "nothing was forced" in out
        assert not (demo / "export" / "federated-int8").exists() or not any((demo / "export" / "federated-int8")
                                                                             .iterdir())
        assert (demo / "export" / "federated-fp32" / "model.onnx").is_file()

    # the final table
    assert "reward-model accuracy on each source's held-out pairs" in out and "guessing (95%)" in out
    assert "longer wins" in out and "fed. prefers longer" in out  # length bias beside accuracy
    for row in results["accuracy"]:
        assert 0 <= row["longer wins"] <= 1 and 0 <= row["prefers longer"]["federated"] <= 1
    for source in ("hh-rlhf", "finegrained-rlhf", "llmbar"):
        assert any(line.strip().startswith(source) and "%" in line for line in out.splitlines())
    for label in ("PPO reward", "audit reward", "KL to reference"):
        assert label in out
    assert "sha256" in out and str(demo) in out
    page = (demo / "demo_report.html").read_text()
    assert page.count("<svg") >= 3 and "federated" in page and "guessing (95%)" in page


def test_chance_band_is_the_95_percent_range_of_a_guessing_model() -> None:
    from node.demo_report import chance_band

    assert chance_band(100) == pytest.approx(0.098)  # 1.96 * sqrt(0.25 / 100)
    assert chance_band(80) == pytest.approx(0.1096, abs=1e-4)
    assert math.isnan(chance_band(0))


def test_tiny_backbone_is_the_same_on_every_build(tmp_path: Path) -> None:
    """The quick demo's reward-model backbone: same texts, same vocabulary and weights (tokenizers' own trainer
    numbered its vocabulary differently from run to run). Any word still splits into known pieces."""
    from transformers import AutoTokenizer

    from node.demo_models import build_tiny_backbone

    texts = [f"the quick brown fox {i} jumps over the lazy dog {i * 7}" for i in range(50)] + ["xyzzy qwv"]
    a, b = (build_tiny_backbone(tmp_path / name, texts, vocab_size=200) for name in ("a", "b"))
    for name in ("tokenizer.json", "model.safetensors"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    tokenizer = AutoTokenizer.from_pretrained(a)
    assert tokenizer.unk_token_id not in tokenizer("the quick zoxq")["input_ids"]  # unseen word: characters
    assert tokenizer.tokenize("the fox") == ["the", "fox"]
