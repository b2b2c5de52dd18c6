"""Every CLI command runs as a real subprocess; user mistakes give one line and the right exit code."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SAMPLES = Path(__file__).resolve().parents[2] / "node" / "samples"


def rn(*args: str, home: Path | None = None, env: dict[str, str] | None = None,
       input: str | None = None) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "node.cli", *args]
    if home is not None:
        argv += ["--home", str(home)]
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    full_env.pop("REWARDNODE_HOME", None)
    return subprocess.run(argv, capture_output=True, text=True, env=full_env, input=input, timeout=120)


def assert_one_line_error(proc: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture()
def home(tmp_path: Path) -> Path:
    home = tmp_path / "node"
    proc = rn("init", "--name", "org-test", home=home)
    assert proc.returncode == 0, proc.stderr
    return home


def write_jsonl(path: Path, records: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_help_lists_every_command() -> None:
    proc = rn("--help")
    assert proc.returncode == 0
    for command in ("init", "identity", "import", "export-data", "stats", "aggregate"):
        assert command in proc.stdout
        sub = rn(command, "--help")
        assert sub.returncode == 0 and "--home" in sub.stdout, (command, sub.stdout)


def test_init_writes_config_key_and_database(home: Path) -> None:
    assert (home / "node.toml").read_text().startswith("# rewardnode node configuration")
    assert (home / "identity.key").stat().st_mode & 0o777 == 0o600
    assert (home / "store.db").exists()
    again = rn("init", "--name", "org-test", home=home)
    assert_one_line_error(again, 1, "already holds a node")


def test_identity_json(home: Path) -> None:
    proc = rn("identity", "--json", home=home)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["name"] == "org-test"
    assert len(info["public_key"]) == 64 and int(info["public_key"], 16) >= 0
    assert info["fingerprint"]


def test_encrypted_key_needs_the_passphrase(tmp_path: Path) -> None:
    home = tmp_path / "enc"
    env = {"REWARDNODE_PASSPHRASE": "correct horse"}
    assert rn("init", "--name", "enc", "--encrypt-key", home=home, env=env).returncode == 0
    assert b"ENCRYPTED" in (home / "identity.key").read_bytes()
    assert rn("identity", "--json", home=home, env=env).returncode == 0
    wrong = rn("identity", home=home, env={"REWARDNODE_PASSPHRASE": "wrong"})
    assert_one_line_error(wrong, 1, "passphrase")


def test_home_flag_before_or_after_the_command(home: Path) -> None:
    before = subprocess.run([sys.executable, "-m", "node.cli", "--home", str(home), "stats", "--json"],
                            capture_output=True, text=True, timeout=60)
    after = rn("stats", "--json", home=home)
    assert before.returncode == after.returncode == 0
    assert json.loads(before.stdout) == json.loads(after.stdout)


def test_import_stats_export_aggregate(home: Path, tmp_path: Path) -> None:
    proc = rn("import", str(SAMPLES / "llmbar" / "train.jsonl.gz"), "--source", "llmbar", home=home)
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(rn("stats", "--json", home=home).stdout)["sources"]
    assert stats["llmbar"]["comparisons"] == 697
    # importing the same file twice adds nothing
    assert rn("import", str(SAMPLES / "llmbar" / "train.jsonl.gz"), "--source", "llmbar", home=home).returncode == 0
    assert json.loads(rn("stats", "--json", home=home).stdout)["sources"] == stats

    votes = write_jsonl(tmp_path / "votes.jsonl", [
        {"prompt": f"q{i}", "responses": ["x", "y", "z"], "votes": [
            {"annotator": f"ann{j}", "a": 0, "b": 1, "outcome": "A" if (i + j) % 3 else "B"} for j in range(3)]}
        for i in range(20)])
    assert rn("import", str(votes), "--format", "multi", "--source", "crowd", home=home).returncode == 0
    agg = rn("aggregate", "--json", home=home)
    assert agg.returncode == 0, agg.stderr
    summary = json.loads(agg.stdout)
    assert summary["comparisons"] == 697 + 60
    assert -1.0 <= summary["alpha"]["overall"] <= 1.0
    assert set(summary["alpha"]["by_source"]) >= {"crowd"}
    assert summary["ambiguous"], "20 items with a 2:1 split must queue low-agreement pairs"

    out = tmp_path / "export.jsonl.gz"
    assert rn("export-data", str(out), "--format", "trl", home=home).returncode == 0
    with gzip.open(out, "rt") as f:
        assert sum(1 for _ in f) == 697 + 60
    exists = rn("export-data", str(out), home=home)
    assert_one_line_error(exists, 2, "--force")


def test_bad_line_stores_nothing_and_names_the_line(home: Path, tmp_path: Path) -> None:
    good = {"prompt": "p", "chosen": "c", "rejected": "r"}
    lines = [json.dumps({**good, "prompt": f"p{i}"}) for i in range(10)]
    lines[2] = '{"prompt": "p2", "chosen": "c"'
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    proc = rn("import", str(bad), home=home)
    assert_one_line_error(proc, 1, f"{bad}:3:")
    assert json.loads(rn("stats", "--json", home=home).stdout)["sources"] == {}

    skipped = rn("import", str(bad), "--skip-invalid", home=home)
    assert skipped.returncode == 0, skipped.stderr
    rejects = (tmp_path / "bad.jsonl.rejects.jsonl").read_text().splitlines()
    assert len(rejects) == 1 and json.loads(rejects[0])["line"] == 3
    assert json.loads(rn("stats", "--json", home=home).stdout)["sources"]["bad"]["comparisons"] == 9


def test_user_mistakes_are_one_line(tmp_path: Path, home: Path) -> None:
    assert_one_line_error(rn("stats", home=tmp_path / "nothing"), 1, "rewardnode init")
    assert_one_line_error(rn("import", str(tmp_path / "missing.jsonl"), home=home), 2, "no such file")
    assert_one_line_error(rn("init", "--name", "bad name!", home=tmp_path / "x"), 2, "invalid node name")
    assert_one_line_error(rn("init", "--name", "pg", "--db", "postgresql+psycopg://nobody@127.0.0.1:1/none",
                             home=tmp_path / "pg"), 1)
    assert not (tmp_path / "pg" / "node.toml").exists(), "a failed init must leave no half-made node"
    unknown = rn("frobnicate")
    assert unknown.returncode == 2 and "Traceback" not in unknown.stderr

