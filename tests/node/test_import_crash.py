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

from node.import_worker import can_fork
from tests.node.test_cli import rn

pytestmark = [pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX"), pytest.mark.e2e]


def _write(path: Path, n: int, tag: str) -> Path:
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            f.write(json.dumps({"prompt": f"{tag} question {i // 3}", "chosen": f"{tag} good answer {i}",
                                "rejected": f"{tag} poor answer {i}", "annotator": f"labeler-{i % 7}"}) + "\n")
    return path


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _count(db: Path, table: str) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


@pytest.mark.parametrize("moment", ["reading", "committing"])
def test_sigkill_during_import_keeps_committed_rows_and_no_partial_batch(tmp_path: Path, moment: str) -> None:
    if moment == "reading" and not can_fork():
        pytest.skip("no worker process here: the file is read in the importing process")
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
    seen_worker = None
    try:
        # "reading": once the worker process reads the file and batches go into the open transaction;
        # "committing": once the commit writes to the write-ahead log (past a few pages).
        while time.monotonic() < deadline and proc.poll() is None:
            if moment == "reading" and _children(proc.pid):
                seen_worker = seen_worker or time.monotonic()
                if time.monotonic() > seen_worker + 0.3:
                    break
            if moment == "committing" and wal.exists() and wal.stat().st_size > 2 << 20:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the import finished before it could be killed; make the file bigger"
        workers = _children(proc.pid)  # the process reading the file (node/import_worker.py), if any
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert workers or moment == "committing"
    deadline = time.monotonic() + 30  # a worker ends at its next send into the pipe nobody reads
    while time.monotonic() < deadline and any(_alive(pid) for pid in workers):
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in workers), "the import's worker process outlived the killed import"

    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    after = {t: _count(db, t) for t in before}
    assert after == before  # nothing of the killed import, everything committed before it

    # The node works on: the first file is still fully there (0 added), new data goes in.
    again = rn("import", str(first), "--source", "first", home=home)
    assert again.returncode == 0 and "nothing new: all 300 records were already stored" in again.stdout, \
        again.stdout + again.stderr
    small = _write(tmp_path / "small.jsonl", 50, "small")
    assert rn("import", str(small), "--source", "small", home=home).returncode == 0
    assert _count(db, "comparisons") == 350
