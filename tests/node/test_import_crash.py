"""A node killed (SIGKILL) in the middle of an import loses no committed row and keeps no partial batch."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.node.test_cli import rn

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")


def _write(path: Path, n: int, tag: str) -> Path:
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            f.write(json.dumps({"prompt": f"{tag} question {i // 3}", "chosen": f"{tag} good answer {i}",
                                "rejected": f"{tag} poor answer {i}", "annotator": f"labeler-{i % 7}"}) + "\n")
    return path


def _count(db: Path, table: str) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def test_sigkill_during_import_keeps_committed_rows_and_no_partial_batch(tmp_path: Path) -> None:
    home = tmp_path / "node"
    assert rn("init", "--name", "org-crash", home=home).returncode == 0
    db = home / "store.db"
    first = _write(tmp_path / "first.jsonl", 300, "first")
    assert rn("import", str(first), "--source", "first", home=home).returncode == 0
    before = {t: _count(db, t) for t in ("comparisons", "prompts", "responses", "annotators", "sources")}
    assert before["comparisons"] == 300

    big = _write(tmp_path / "big.jsonl", 200_000, "big")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("REWARDNODE_HOME", None)
    proc = subprocess.Popen([sys.executable, "-m", "node.cli", "import", str(big), "--source", "big",
                             "--home", str(home)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    wal = home / "store.db-wal"
    deadline = time.monotonic() + 60
    try:
        # Kill it once batches are being written: the write-ahead log has grown past a few pages.
        while time.monotonic() < deadline and proc.poll() is None:
            if wal.exists() and wal.stat().st_size > 2 << 20:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the import finished before it could be killed; make the file bigger"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    after = {t: _count(db, t) for t in before}
    assert after == before  # nothing of the killed import, everything committed before it

    # The node works on: the first file is still fully there (0 added), new data goes in.
    again = rn("import", str(first), "--source", "first", home=home)
    assert again.returncode == 0 and "0 records added" in again.stdout, again.stdout + again.stderr
    small = _write(tmp_path / "small.jsonl", 50, "small")
    assert rn("import", str(small), "--source", "small", home=home).returncode == 0
    assert _count(db, "comparisons") == 350
