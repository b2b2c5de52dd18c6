"""`rewardnode serve` as a real process: the HTTP API and the libp2p host beside it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.node.test_cli import rn

pytest.importorskip("libp2p")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def interrupt(proc: subprocess.Popen[str]) -> str:
    """Stop a `serve` process as Ctrl-C would (killed if it takes over 30 s); its stderr."""
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return str(err)


def test_serve_runs_http_and_the_p2p_host(tmp_path: Path) -> None:
    home = tmp_path / "node"
    assert rn("init", "--name", "org-serve", home=home).returncode == 0
    with (home / "node.toml").open("a", encoding="utf-8") as f:
        f.write('\n[p2p]\nlisten = ["/ip4/127.0.0.1/tcp/0"]\ndht = false\n')
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("REWARDNODE_HOME", None)
    proc = subprocess.Popen([sys.executable, "-m", "node.cli", "serve", "--port", str(port), "--home", str(home)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 90
        health = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    health = json.loads(r.read())
                    break
            except OSError:
                time.sleep(0.2)
        assert health is not None, proc.stderr.read() if proc.poll() is not None else "no answer on /healthz"
        identity = json.loads(rn("identity", "--json", home=home).stdout)
    finally:
        err = interrupt(proc)
    assert f"p2p: peer {identity['peer_id']} listening on /ip4/127.0.0.1/tcp/" in err, err
    assert proc.returncode == 0, err


def test_serve_names_a_busy_p2p_port_and_the_way_out(tmp_path: Path) -> None:
    home = tmp_path / "node"
    assert rn("init", "--name", "org-busy", home=home).returncode == 0
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        with (home / "node.toml").open("a", encoding="utf-8") as f:
            f.write(f'\n[p2p]\nlisten = ["/ip4/127.0.0.1/tcp/{taken}"]\ndht = false\n')
        proc = rn("serve", "--port", str(_free_port()), home=home)
    assert proc.returncode == 1, proc.stderr
    assert "--no-p2p" in proc.stderr and "Traceback" not in proc.stderr
