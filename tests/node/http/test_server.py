"""run_server: prints its URL, serves, and stops cleanly on SIGTERM and SIGINT."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = """
from node.http import ScorerRegistry, ServerConfig, create_app, run_server
class Fixed:
    def score(self, prompts, responses):
        return [1.0] * len(prompts)
app = create_app(ServerConfig(require_auth=False), scorers=ScorerRegistry.from_scorers({"m": Fixed()}))
run_server(app, "127.0.0.1", 0)
print("exited cleanly", flush=True)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_run_server_prints_its_url_and_stops_on_a_signal(sig) -> None:
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("rewardnode serving on http://127.0.0.1:"), line + proc.stderr.read()
        url = line.split()[3]
        with urllib.request.urlopen(url + "healthz", timeout=10) as resp:
            assert json.load(resp) == {"ok": True}
        request = urllib.request.Request(url + "v1/score", data=json.dumps({"items": [
            {"prompt": "p", "response": "r"}]}).encode(), headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert json.load(resp) == {"model": "m", "scores": [1.0]}
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "stopping" in out and "exited cleanly" in out
