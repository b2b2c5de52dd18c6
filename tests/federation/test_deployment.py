"""Flower's deployment engine for real, on 127.0.0.1: a TLS SuperLink, 3 SuperNodes (one per node home),
2 rounds; one member's SuperNode is SIGKILLed as round 2 starts. The round completes with the other two
(min_participants = 2), and the federated model lands in their registries with a verifiable chain.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from node.app import Node
from node.federated import verify_model

pytestmark = pytest.mark.slow


def _rewardnode(home: Path, *args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1", "OMP_NUM_THREADS": "1"}
    log = (home / f"cli-{args[1]}.log").open("wb")
    return subprocess.Popen([sys.executable, "-m", "node.cli", "--home", str(home), *args], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def _free_port() -> int:
    from federation.deployment import free_port

    return free_port()


def test_deployment_engine_with_a_member_killed_mid_run(make_federation, tmp_path: Path) -> None:
    port = _free_port()
    coord, homes = make_federation(3, pairs=12, extra=("--min-participants", "2", "--round-timeout", "20"))
    ca = coord / "federation" / "fed" / "tls" / "ca.pem"
    agreement = coord / "federation" / "fed" / "agreement.json"
    for home in homes:  # re-join with the real address and the CA
        from tests.federation.conftest import cli
        assert cli("--home", str(home), "federation", "join", "fed", "--coordinator", f"127.0.0.1:{port}",
                   "--agreement", str(agreement), "--ca", str(ca)) == 0
    coordinator = _rewardnode(coord, "federation", "run", "fed", "--port", str(port), "--timeout", "240")
    from federation.deployment import wait_for_port
    wait_for_port(port, 60)
    members = [_rewardnode(h, "federation", "run", "fed", "--timeout", "240") for h in homes]
    victim_log = homes[2] / "federation" / "fed" / "run" / "supernode.log"
    round1 = coord / "federation" / "fed" / "rounds" / "round-0001.manifest.json"
    try:
        deadline = time.monotonic() + 200
        while not round1.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert round1.exists(), "round 1 never finished"
        # SIGKILL the victim's whole group: its `rewardnode` CLI, its SuperNode and any ClientApp process.
        os.killpg(members[2].pid, signal.SIGKILL)
        supernode_pids = [int(p) for p in subprocess.run(["pgrep", "-f", str(homes[2])], capture_output=True,
                                                          text=True).stdout.split()]
        for pid in supernode_pids:  # the SuperNode runs in its own session: kill it by its pid
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        assert coordinator.wait(240) == 0, (coord / "cli-run.log").read_text()[-3000:]
        for m in members[:2]:
            assert m.wait(60) == 0
    finally:
        for p in (coordinator, *members):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(30)
    outcome = json.loads((coord / "federation" / "fed" / "rounds" / "outcome.json").read_text())
    assert outcome["accepted"] == [3, 2]
    assert [r["reason"] for r in outcome["rejected"][1]] == ["no-reply"]
    ids = set()
    for home in homes[:2]:
        with Node.open(home) as node:
            [entry] = [m for m in node.store.list_models() if m.kind == "federated"]
            assert verify_model(node, entry.id)["rounds"] == 2
            ids.add(entry.id)
    assert len(ids) == 1
    assert victim_log.exists()
