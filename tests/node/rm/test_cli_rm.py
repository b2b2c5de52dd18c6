"""`rewardnode train / models / eval / score / export / serve` on a tiny BERT, end to end.

`train` and the user mistakes run as real subprocesses; the other commands run in-process through
node.cli.main (same parser, same error contract) to keep the suite fast.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from transformers import AutoModelForSequenceClassification

from node.app import Node
from node.cli import main
from node.http import ServerConfig
from node.rm.artifact import read_card
from node.rm.standalone import INT8_FILE, SCORING_FILE, OnnxRewardScorer
from node.serve import build_app

from .conftest import DISTRACTOR, MARKER, synthetic_pairs
from .conftest_export import dev_pairs


def rn(*args: str, home: Path | None = None) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "node.cli", *args] + (["--home", str(home)] if home else [])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("REWARDNODE_HOME", None)
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=180)


def one_line_error(proc: subprocess.CompletedProcess[str] | tuple[int, str], code: int, *needles: str) -> str:
    rc, err = (proc.returncode, proc.stderr) if isinstance(proc, subprocess.CompletedProcess) else proc
    assert rc == code, (rc, err)
    assert "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if line.startswith("rewardnode: error:")]
    assert len(lines) == 1 and len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run the CLI in this process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def write_jsonl(path: Path, records: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@dataclass(frozen=True)
class Trained:
    home: Path
    model_id: str
    eval_file: Path
    stdout: str


@pytest.fixture(scope="module")
def trained(bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """A node with comparisons (two sources), votes, rankings, ratings and feedback, and a tiny model trained on it."""
    root = tmp_path_factory.mktemp("cli-rm")
    home = root / "node"
    assert main(["init", "--name", "org-rm", "--home", str(home)]) == 0
    trl = [{"prompt": q.prompt, "chosen": q.chosen, "rejected": q.rejected} for q in synthetic_pairs(64)]
    multi = [{"prompt": f"m{i} what is the answer", "responses": [f"it is {MARKER} w{i}", f"it is {DISTRACTOR} w{i}",
                                                                   f"w{i} w{i}"],
              "votes": [{"annotator": "ann1", "a": 0, "b": 1, "outcome": "A"},
                        {"annotator": "ann2", "a": 1, "b": 0, "outcome": "B"},
                        {"annotator": "ann3", "a": 1, "b": 2, "outcome": "both_bad"}],
              "rankings": [{"annotator": "ann4", "order": [0, 1, 2]}]} for i in range(12)]
    ratings = [{"prompt": f"r{i % 6} how do I", "response": f"w{i} {MARKER if i % 2 else DISTRACTOR}",
                "rating": 6 if i % 2 else 2, "scale": [1, 7]} for i in range(12)]
    feedback = [{"prompt": f"f{i % 6} tell me", "response": f"w{i} {MARKER if i % 2 else DISTRACTOR}",
                 "thumbs": "up" if i % 2 else "down"} for i in range(12)]
    for name, records in (("alpha", trl), ("beta", multi), ("gamma", ratings), ("delta", feedback)):
        path = write_jsonl(root / f"{name}.jsonl", records)
        assert main(["import", str(path), "--source", name, "--home", str(home)]) == 0
    proc = rn("train", "--base", str(bert_dir), "--epochs", "3", "--max-length", "48", "--batch-size", "8",
              "--lr", "3e-3", "--threads", "1", "--dev-fraction", "0.2", "--mean-pool-init", home=home)
    assert proc.returncode == 0, proc.stderr
    match = re.search(r"registered model ([0-9a-f]{12}) \(personal\)", proc.stdout)
    assert match, proc.stdout
    eval_file = write_jsonl(root / "heldout.jsonl", [
        {"prompt": q.prompt, "chosen": q.chosen, "rejected": q.rejected, "source": "heldout"} for q in dev_pairs(40)])
    return Trained(home, match.group(1), eval_file, proc.stdout)


def test_train_registers_a_loadable_model_with_its_card(trained: Trained, capsys: pytest.CaptureFixture[str]) -> None:
    assert "both_bad left out" in trained.stdout and "dev accuracy" in trained.stdout
    code, out, _ = cli(capsys, "models", "--json", "--home", str(trained.home))
    assert code == 0
    [entry] = json.loads(out)
    assert entry["id"] == trained.model_id and entry["kind"] == "personal"
    assert entry["metrics"]["n_train"] > 0 and entry["metrics"]["dev_accuracy"] is not None
    model = AutoModelForSequenceClassification.from_pretrained(entry["path"])
    assert model.config.num_labels == 1
    card = read_card(entry["path"])
    assert card["snapshot"]["id"] == entry["snapshot"] and card["sha256"] == entry["sha256"]
    assert card["sources"] == ["alpha", "beta", "delta", "gamma"]
    counts = card["counts"]
    assert counts["both_bad_skipped"] == 12 and counts["rankings"] == 12
    assert counts["pairs_from_ratings"] > 0 and counts["pairs_from_feedback"] > 0
    assert set(card["metrics"]["length_bias"]) >= {"longer_wins_accuracy", "prefers_longer"}
    assert card["config"]["max_length"] == 48 and card["config"]["epochs"] == 3
    assert card["config"]["mean_pool_init"] is True
    code, out, _ = cli(capsys, "models", "--home", str(trained.home))
    assert code == 0 and trained.model_id in out and "personal" in out


def test_eval_json_reports_accuracy_calibration_and_length_bias(
        trained: Trained, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "eval", "--model", trained.model_id[:8], "--data", str(trained.eval_file), "--json",
                       "--threads", "1", "--home", str(trained.home))
    assert code == 0
    report = json.loads(out)
    assert report["n"] == 40 and report["by_source"]["heldout"]["n"] == 40
    assert report["accuracy"] >= 0.9  # the marker is learnable; dev pairs were never trained on
    for key in ("ece", "longer_wins_accuracy", "mean_margin", "length_correlation", "prefers_longer"):
        assert key in report
    assert report["n_truncated"] >= 4  # the long prompts of dev_pairs are cut in the middle
    code, out, _ = cli(capsys, "eval", "--data", str(trained.eval_file), "--source", "renamed",
                       "--home", str(trained.home))
    assert code == 0 and "renamed: accuracy" in out  # --source names the file's records, as in import


def test_score_ranks_the_marker_higher(trained: Trained, capsys: pytest.CaptureFixture[str]) -> None:
    home = ["--home", str(trained.home)]
    code, good, _ = cli(capsys, "score", "--prompt", "q1 help me", "--response", f"w1 {MARKER} w2", *home)
    assert code == 0
    code, bad, _ = cli(capsys, "score", "--prompt", "q1 help me", "--response", f"w1 {DISTRACTOR} w2", "--json", *home)
    assert code == 0
    answer = json.loads(bad)
    assert answer["model"] == trained.model_id and float(good) > answer["reward"]


def test_export_hf_and_onnx_int8_through_the_gate(trained: Trained, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    home = ["--home", str(trained.home)]
    code, out, _ = cli(capsys, "export", "--format", "hf", "--out", str(tmp_path / "hf"), *home)
    assert code == 0 and "model.safetensors" in out
    assert AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf").config.num_labels == 1
    modes = {p.name: p.stat().st_mode & 0o777 for p in [tmp_path / "hf", *(tmp_path / "hf").iterdir()]}
    assert modes.pop("hf") == 0o755 and set(modes.values()) == {0o644}, modes  # meant to be copied, as ONNX
    assert "model.safetensors" in modes and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]

    code, out, err = cli(capsys, "export", "--model", trained.model_id, "--format", "onnx-int8", "--out",
                         str(tmp_path / "int8"), "--threads", "1", *home)
    assert code == 0, err
    assert "int8 fidelity gate PASSED" in out and "latency onnx_int8" in out and "model.int8.onnx" in out
    checks = json.loads((tmp_path / "int8" / SCORING_FILE).read_text())["checks"]["int8"]
    assert checks["passed"] and checks["n_dev_pairs"] > 0  # the dev split, rebuilt from the card's snapshot
    scorer = OnnxRewardScorer(tmp_path / "int8", variant="int8")
    good, bad = scorer.score(["q1 help me"] * 2, [f"w1 {MARKER} w2", f"w1 {DISTRACTOR} w2"])
    assert good > bad

    code, out, err = cli(capsys, "export", "--format", "onnx", "--out", str(tmp_path / "fp32"), "--no-latency",
                         "--data", str(trained.eval_file), *home)
    assert code == 0, err
    assert not (tmp_path / "fp32" / INT8_FILE).exists() and "checks on 40 dev pairs" in out


def test_export_int8_scheme_by_name(trained: Trained, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import node.commands.rm as rm_commands
    import node.rm.export as export

    assert rm_commands.INT8_SCHEMES == export.INT8_SCHEMES  # the CLI's copy (it does not import torch to parse)
    home = ["--home", str(trained.home)]
    code, out, err = cli(capsys, "export", "--format", "onnx-int8", "--int8", "weights", "--out",
                         str(tmp_path / "w"), "--no-latency", *home)
    assert code == 0, err
    assert "int8 fidelity gate PASSED" in out and "wrote weights int8" in out and "computes in fp32" in out
    assert json.loads((tmp_path / "w" / SCORING_FILE).read_text())["checks"]["int8"]["scheme"] == "weights"


def test_int8_gate_failure_refuses_unless_forced(trained: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str],
                                                 caplog: pytest.LogCaptureFixture) -> None:
    import node.rm.export as export

    monkeypatch.setattr(export, "_int8_fidelity", lambda *a: (0.5, 3.0))  # an int8 model that flips half the pairs
    home = ["--home", str(trained.home)]
    out_dir = tmp_path / "refused"
    code, _, err = cli(capsys, "export", "--format", "onnx-int8", "--out", str(out_dir), "--no-latency", *home)
    one_line_error((code, err), 1, "int8 fidelity gate failed", "--force")
    assert not out_dir.exists() and not list(tmp_path.iterdir())  # nothing half-written
    code, out, err = cli(capsys, "export", "--format", "onnx-int8", "--out", str(out_dir), "--no-latency",
                         "--force", *home)
    assert code == 0 and "WARNING: int8 fidelity gate FAILED" in err and "FAILED (forced)" in out
    # said once: a log record would print it a second time (logging's last-resort handler writes to stderr)
    assert err.count("int8 fidelity gate FAILED") == 1, err
    assert not [r for r in caplog.records if "int8 fidelity gate FAILED" in r.getMessage()]
    assert json.loads((out_dir / SCORING_FILE).read_text())["checks"]["int8"]["forced"] is True


@pytest.fixture
def node(trained: Trained) -> Iterator[Node]:
    with Node.open(trained.home) as n:
        yield n


async def test_serve_app_scores_with_the_registered_model(trained: Trained, node: Node, aiohttp_client) -> None:
    client = await aiohttp_client(build_app(node, config=ServerConfig(require_auth=False)))
    resp = await client.get("/v1/models")
    assert resp.status == 200
    body = await resp.json()
    assert body["default"] == trained.model_id
    items = [{"prompt": "q1 help me", "response": f"w1 {MARKER} w2"},
             {"prompt": "q1 help me", "response": f"w1 {DISTRACTOR} w2"}]
    resp = await client.post("/v1/score", json={"items": items})
    assert resp.status == 200, await resp.text()
    scores = (await resp.json())["scores"]
    assert scores[0] > scores[1]
    resp = await client.post("/v1/score", json={"model": "nope", "items": items})
    assert resp.status == 404 and (await resp.json())["ok"] is False


def test_serve_refuses_an_unknown_model(node: Node) -> None:
    from storage.errors import NotFoundError

    with pytest.raises(NotFoundError, match="ffffff"):
        build_app(node, models=["ffffff"], config=ServerConfig(require_auth=False))


def test_user_mistakes_give_one_line_and_the_right_code(trained: Trained, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    # as real processes
    one_line_error(rn("score", "--model", "abcdef123456", "--prompt", "p", "--response", "r", home=trained.home),
                   1, "abcdef123456")
    one_line_error(rn("eval", "--data", str(tmp_path / "missing.jsonl"), home=trained.home), 2, "no such file")
    empty = tmp_path / "empty"
    assert rn("init", "--name", "empty", home=empty).returncode == 0
    one_line_error(rn("train", "--epochs", "1", home=empty), 1, "store is empty", "rewardnode import")
    # in-process: the same parser and error contract, without another torch import
    code, _, err = cli(capsys, "score", "--prompt", "p", "--response", "r", "--home", str(empty))
    one_line_error((code, err), 1, "no personal reward model", "rewardnode train")
    code, _, err = cli(capsys, "export", "--format", "onnx", "--out", str(tmp_path), "--home", str(trained.home))
    one_line_error((code, err), 2, "not empty")
    code, _, err = cli(capsys, "train", "--epochs", "0", "--home", str(trained.home))
    one_line_error((code, err), 2, "--epochs = 0 must be >= 1")
    code, _, err = cli(capsys, "train", "--cpu-workers", "-1", "--home", str(trained.home))
    one_line_error((code, err), 2, "--cpu-workers = -1 is negative")
    code, _, err = cli(capsys, "train", "--source", "nope", "--home", str(trained.home))
    one_line_error((code, err), 1, "no source named 'nope'")
    code, _, err = cli(capsys, "eval", "--model", str(tmp_path), "--data", str(trained.eval_file),
                       "--home", str(trained.home))
    one_line_error((code, err), 2, "not a model folder")


@pytest.mark.parametrize("fmt", ["onnx", "hf"])
def test_export_refuses_int8_flag_without_an_int8_format(fmt: str, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    # `--format onnx --int8 dynamic` wrote an fp32 model only and said nothing of the ignored --int8
    code, _, err = cli(capsys, "export", "--format", fmt, "--int8", "dynamic", "--out", str(tmp_path / "out"),
                       "--home", str(tmp_path / "home"))
    one_line_error((code, err), 2, "--int8 dynamic applies to --format onnx-int8 (fp32 + int8), not "
                   f"--format {fmt}")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("fmt", ["onnx", "hf"])
@pytest.mark.parametrize(("flags", "shown", "dropped"), [
    (["--force"], "--force applies", "drop --force"),
    (["--min-agreement", "0.9"], "--min-agreement 0.9 applies", "drop --min-agreement"),
    (["--min-agreement", "0.995"], "--min-agreement 0.995 applies", "drop --min-agreement"),  # default value
    (["--force", "--min-agreement", "0.5"], "--force --min-agreement 0.5 apply",
     "drop --force and --min-agreement"),
], ids=["force", "min-agreement", "min-agreement-default-value", "both"])
def test_export_refuses_gate_flags_without_an_int8_format(
        fmt: str, flags: list[str], shown: str, dropped: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    # --force and --min-agreement tune the int8 fidelity gate: with onnx or hf they were silently ignored
    code, _, err = cli(capsys, "export", "--format", fmt, *flags, "--out", str(tmp_path / "out"),
                       "--home", str(tmp_path / "home"))
    one_line_error((code, err), 2, f"{shown} to --format onnx-int8 (fp32 + int8), not --format {fmt}",
                   f"pass --format onnx-int8, or {dropped}")
    assert not (tmp_path / "out").exists() and not (tmp_path / "home").exists()


def test_export_min_agreement_defaults_to_0995_and_is_range_checked(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from node.cli import build_parser

    args = build_parser().parse_args(["export", "--format", "onnx-int8", "--out", str(tmp_path / "out")])
    assert args.min_agreement is None and not args.force  # "not given" is told apart from the default value
    code, _, err = cli(capsys, "export", "--format", "onnx-int8", "--min-agreement", "1.5",
                       "--out", str(tmp_path / "out"), "--home", str(tmp_path / "home"))
    one_line_error((code, err), 2, "--min-agreement 1.5 must lie in [0, 1]")
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    assert "(default 0.995)" in " ".join(capsys.readouterr().out.split())


def _snapshots(home: Path) -> int:
    with Node.open(home) as n:
        return len(n.store.list_snapshots())


def test_train_refuses_a_max_length_beyond_the_backbone_before_any_work(
        bert_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "node"
    assert main(["init", "--name", "org-len", "--home", str(home)]) == 0
    write_jsonl(tmp_path / "d.jsonl", [{"prompt": q.prompt, "chosen": q.chosen, "rejected": q.rejected}
                                       for q in synthetic_pairs(8)])
    assert main(["import", str(tmp_path / "d.jsonl"), "--source", "s", "--home", str(home)]) == 0
    base = ["--base", str(bert_dir), "--home", str(home)]  # the tiny BERT has 128 positions
    code, _, err = cli(capsys, "train", "--max-length", "100000", *base)
    one_line_error((code, err), 2,
                   "--max-length 100000 is more than the backbone's 128 positions; use 128 or less")
    code, _, err = cli(capsys, "train", *base)  # the default, 256
    one_line_error((code, err), 2, "the default max length 256 is more than the backbone's 128 positions",
                   "--max-length 128")
    with (home / "node.toml").open("a", encoding="utf-8") as f:
        f.write("\n[rm]\nmax_length = 1000\n")
    code, _, err = cli(capsys, "train", *base)
    one_line_error((code, err), 2, f"rm.max_length = 1000 in {home / 'node.toml'} is more than the "
                   "backbone's 128 positions; set it to 128 or less")
    assert _snapshots(home) == 0  # refused before the snapshot, long before a training step


def test_an_out_inside_a_file_is_refused_before_any_work(trained: Trained, bert_dir: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "afile").write_text("")
    out = str(tmp_path / "afile" / "sub")
    home = ["--home", str(trained.home)]
    snapshots = _snapshots(trained.home)
    code, _, err = cli(capsys, "train", "--base", str(bert_dir), "--max-length", "48", "--out", out, *home)
    one_line_error((code, err), 2, f"--out {out}: {tmp_path / 'afile'} is a file")
    assert _snapshots(trained.home) == snapshots  # no snapshot frozen, nothing trained
    for fmt in ("hf", "onnx", "onnx-int8"):
        code, _, err = cli(capsys, "export", "--format", fmt, "--out", out, "--no-latency", *home)
        one_line_error((code, err), 2, f"--out {out}: {tmp_path / 'afile'} is a file")
    if Path("/proc/self").is_dir():  # nothing can be created there, even by root
        code, _, err = cli(capsys, "export", "--format", "hf", "--out", "/proc/rewardnode-test", *home)
        one_line_error((code, err), 2, "cannot create folders in /proc")
    assert list(tmp_path.iterdir()) == [tmp_path / "afile"]


def test_train_prints_the_prompts_it_held_out(trained: Trained) -> None:
    match = re.search(r"dev ([\d,]+) \(([\d,]+) of ([\d,]+) prompts held out, (\d+)%\)", trained.stdout)
    assert match, trained.stdout
    dev_prompts, prompts, percent = int(match.group(2)), int(match.group(3)), int(match.group(4))
    assert 0 < dev_prompts < prompts and percent == round(100 * dev_prompts / prompts)


def test_threads_zero_is_torchs_default_everywhere(trained: Trained,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    home = ["--home", str(trained.home)]
    code, out, err = cli(capsys, "score", "--prompt", "p", "--response", "r", "--threads", "0", *home)
    assert code == 0, err
    code, _, err = cli(capsys, "eval", "--data", str(trained.eval_file), "--threads", "0", "--json", *home)
    assert code == 0, err
    for command in (["score", "--prompt", "p", "--response", "r"], ["eval", "--data", str(trained.eval_file)],
                    ["train"], ["export", "--format", "hf", "--out", "unused"]):
        code, _, err = cli(capsys, *command, "--threads", "-2", *home)
        one_line_error((code, err), 2, "--threads -2 is negative; give 1 or more, or 0 for torch's default")


async def test_serve_without_a_model_says_why_scoring_is_off(tmp_path: Path, aiohttp_client) -> None:
    home = tmp_path / "node"
    assert main(["init", "--name", "org-nomodel", "--home", str(home)]) == 0
    with Node.open(home) as n:
        client = await aiohttp_client(build_app(n, config=ServerConfig(require_auth=False)))
        for method, path in (("POST", "/v1/score"), ("POST", "/v1/compare"), ("GET", "/v1/models")):
            resp = await client.request(method, path, json={"items": [{"prompt": "p", "response": "r"}]})
            body = await resp.json()
            assert resp.status == 503 and body["ok"] is False, body
            assert "no reward model" in body["error"] and "rewardnode train" in body["error"], body
        assert (await client.get("/healthz")).status == 200


def test_resume_reuses_the_interrupted_runs_snapshot(bert_dir: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    import node.rm.train

    home = tmp_path / "node"
    assert main(["init", "--name", "org-resume", "--home", str(home)]) == 0
    for name, seed in (("first", 0), ("later", 1)):
        rows = [{"prompt": q.prompt, "chosen": q.chosen, "rejected": q.rejected}
                for q in synthetic_pairs(24, seed)]
        write_jsonl(tmp_path / f"{name}.jsonl", rows)
    assert main(["import", str(tmp_path / "first.jsonl"), "--source", "first", "--home", str(home)]) == 0
    flags = ["--base", str(bert_dir), "--max-length", "48", "--epochs", "2", "--lr", "3e-3", "--threads", "1",
             "--home", str(home)]
    save = node.rm.train._save_checkpoint

    def save_then_stop(*args, **kwargs):  # type: ignore[no-untyped-def]
        save(*args, **kwargs)
        raise KeyboardInterrupt  # as Ctrl-C after the first epoch

    monkeypatch.setattr(node.rm.train, "_save_checkpoint", save_then_stop)
    code, out, err = cli(capsys, "train", *flags)
    assert code == 130, err
    monkeypatch.setattr(node.rm.train, "_save_checkpoint", save)
    snapshot = re.search(r"snapshot ([0-9a-f]{12}):", out).group(1)  # type: ignore[union-attr]
    assert main(["import", str(tmp_path / "later.jsonl"), "--source", "later", "--home", str(home)]) == 0
    snapshots = _snapshots(home)

    code, _, err = cli(capsys, "train", "--resume", *flags, "--epochs", "3")  # other settings: no checkpoint
    one_line_error((code, err), 1, f"newest first: {snapshot} (saved", "epochs = 2 (now 3)", "--snapshot ID")
    assert _snapshots(home) == snapshots  # refused without freezing a new snapshot
    code, out, err = cli(capsys, "train", "--resume", *flags)
    assert code == 0, err
    assert f"resuming the interrupted run on snapshot {snapshot}" in out and f"snapshot {snapshot}:" in out
    code, out, _ = cli(capsys, "models", "--json", "--home", str(home))
    assert json.loads(out)[-1]["snapshot"].startswith(snapshot)


def test_serve_loads_a_model_without_a_progress_bar_in_the_log(trained: Trained) -> None:
    import socket
    import time
    import urllib.request

    from tests.node.test_serve import interrupt

    config = trained.home / "node.toml"
    before = config.read_text(encoding="utf-8")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config.write_text(before + "\n[server]\nrequire_auth = false\n", encoding="utf-8")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("REWARDNODE_HOME", None)
    argv = [sys.executable, "-m", "node.cli", "serve", "--no-p2p", "--port", str(port),
            "--home", str(trained.home)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        body = json.dumps({"items": [{"prompt": "q1 help me", "response": f"w1 {MARKER} w2"}]}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/score", data=body,
                                         headers={"Content-Type": "application/json"})
        answer = None
        deadline = time.monotonic() + 120
        while answer is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(request, timeout=60) as r:  # the first request loads the model
                    answer = json.loads(r.read())
            except OSError:
                time.sleep(0.3)
    finally:
        config.write_text(before, encoding="utf-8")
        err = interrupt(proc)
    assert answer is not None and answer["model"] == trained.model_id, err
    assert "Loading weights" not in err and "it/s" not in err, err
