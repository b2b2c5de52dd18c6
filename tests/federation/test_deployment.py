"""Flower's deployment engine for real, on 127.0.0.1: a TLS SuperLink with SuperNode authentication,
3 admitted SuperNodes (one per node home), 3 rounds; one member's SuperNode is SIGKILLed as round 2
starts. The round completes with the other two (min_participants = 2) after the straggler wait, the
member is started again and takes part in round 3, and the federated model lands in every registry
with a verifiable chain. A SuperNode whose key nobody admitted is refused. A coordinator killed with
its SuperLink after round 1 resumes with `--resume`; the members' SuperNodes come back to it by themselves.
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


def _kill_everything_of(home: Path, cli_proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL a node's CLI and every process started for its home (SuperLink, ServerApp): a crash."""
    os.killpg(cli_proc.pid, signal.SIGKILL)
    cli_proc.wait(30)
    for pid in [int(p) for p in subprocess.run(["pgrep", "-f", str(home)], capture_output=True,
                                               text=True).stdout.split()]:
        for kill in (os.killpg, os.kill):
            try:
                kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


@pytest.mark.e2e
def test_deployment_engine_with_a_member_killed_mid_run(make_federation, tmp_path: Path) -> None:
    port = _free_port()
    coord, homes = make_federation(3, pairs=12, extra=("--min-participants", "2", "--round-timeout", "60",
                                                        "--rounds", "3"))
    ca = coord / "federation" / "fed" / "tls" / "ca.pem"
    agreement = coord / "federation" / "fed" / "agreement.json"
    for home in homes:  # re-join with the real address and the CA
        from tests.federation.conftest import cli
        assert cli("--home", str(home), "federation", "join", "fed", "--coordinator", f"127.0.0.1:{port}",
                   "--agreement", str(agreement), "--ca", str(ca)) == 0
    # Without admitted SuperNodes the coordinator refuses to start (nobody could connect).
    from tests.federation.conftest import cli
    assert cli("--home", str(coord), "federation", "run", "fed", "--port", str(port), "--timeout", "5") == 1
    records = [str(h / "federation" / "fed" / "supernode-key.json") for h in homes]
    assert cli("--home", str(coord), "federation", "admit", "fed", *records) == 0
    coordinator = _rewardnode(coord, "federation", "run", "fed", "--port", str(port), "--timeout", "240",
                              "--straggler-wait", "20")
    from federation.deployment import wait_for_port
    wait_for_port(port, 60)
    members = [_rewardnode(h, "federation", "run", "fed", "--timeout", "240") for h in homes]
    # An intruder that trusts the CA but whose SuperNode key was never admitted: the SuperLink refuses it.
    from federation.admission import ensure_supernode_key
    from federation.deployment import start_supernode, supernode_refused
    ensure_supernode_key(tmp_path / "intruder.key")
    intruder = start_supernode(tmp_path, f"127.0.0.1:{port}", ca, {"home": str(homes[0])},
                               auth_key=tmp_path / "intruder.key")
    victim_log = homes[2] / "federation" / "fed" / "run" / "supernode.log"
    round1 = coord / "federation" / "fed" / "rounds" / "round-0001.manifest.json"
    round2 = coord / "federation" / "fed" / "rounds" / "round-0002.manifest.json"
    try:
        deadline = time.monotonic() + 200
        while not round1.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert round1.exists(), "round 1 never finished"
        intruder.popen.wait(60)
        assert supernode_refused(intruder), intruder.output()[-2000:]
        # SIGKILL the victim: its `rewardnode` CLI, its SuperNode (own session) and any ClientApp process.
        _kill_everything_of(homes[2], members[2])
        while not round2.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert round2.exists(), "round 2 never finished without the killed member"
        members[2] = _rewardnode(homes[2], "federation", "run", "fed", "--timeout", "240")  # it comes back
        assert coordinator.wait(240) == 0, (coord / "cli-run.log").read_text()[-3000:]
        for m in members:
            assert m.wait(60) == 0
    finally:
        intruder.stop()
        for p in (coordinator, *members):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(30)
    outcome = json.loads((coord / "federation" / "fed" / "rounds" / "outcome.json").read_text())
    assert outcome["accepted"] == [3, 2, 3], outcome
    assert [r["reason"] for r in outcome["rejected"][1]] == ["no-reply"]
    # The dead member cost at most the straggler wait (20 s), not the 60 s round timeout; it came back
    # once the SuperLink saw it offline (2 missed heartbeats of HEARTBEAT_S), and the coordinator waited
    # for it at the start of round 3. Every member acknowledged the final model.
    assert outcome["round_seconds"][1] < 45, outcome["round_seconds"]
    assert len(outcome["registered"]) == 3, outcome["registered"]
    ids = set()
    for home in homes:
        with Node.open(home) as node:
            [entry] = [m for m in node.store.list_models() if m.kind == "federated"]
            assert verify_model(node, entry.id)["rounds"] == 3
            ids.add(entry.id)
    assert len(ids) == 1
    assert victim_log.exists()


def test_member_waits_until_the_coordinator_admits_its_supernode(make_federation, tmp_path: Path) -> None:
    """A member whose SuperNode the SuperLink refuses (key not registered yet) keeps retrying, and connects
    once the coordinator registers the key from its signed record."""
    from federation.admission import verify_supernode_key
    from federation.agreement import load_agreement
    from federation.deployment import register_supernode, start_superlink, wait_for_port, write_connection
    from federation.tls import TlsFiles
    from tests.federation.conftest import cli, online_supernodes

    port = _free_port()
    coord, [home] = make_federation(1, pairs=4)
    fed = coord / "federation" / "fed"
    assert cli("--home", str(home), "federation", "join", "fed", "--coordinator", f"127.0.0.1:{port}",
               "--agreement", str(fed / "agreement.json"), "--ca", str(fed / "tls" / "ca.pem")) == 0
    tls = TlsFiles(fed / "tls" / "ca.pem", fed / "tls" / "server.pem", fed / "tls" / "server.key")
    superlink = start_superlink(tmp_path, port, tls)
    member = _rewardnode(home, "federation", "run", "fed", "--serve", "--timeout", "120")
    log = home / "federation" / "fed" / "run" / "supernode.log"
    try:
        wait_for_port(port, 60)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and "Exit Code: 305" not in (log.read_text() if log.exists() else ""):
            time.sleep(0.2)
        assert "Exit Code: 305" in log.read_text(), "the SuperLink never refused the unregistered SuperNode"
        assert member.poll() is None, "the member gave up instead of waiting to be admitted"

        key = verify_supernode_key((home / "federation" / "fed" / "supernode-key.json").read_bytes(),
                                   load_agreement(fed / "agreement.json"))
        (tmp_path / "member.pub").write_bytes(key.public_key_ssh)
        write_connection(tmp_path / "flwr", f"127.0.0.1:{port}", tls.ca_cert)
        node_id = register_supernode(tmp_path, tmp_path / "member.pub")
        while time.monotonic() < deadline and node_id not in online_supernodes(tmp_path):
            time.sleep(0.5)
        assert node_id in online_supernodes(tmp_path), "the admitted SuperNode never came online"
    finally:
        if member.poll() is None:
            os.killpg(member.pid, signal.SIGTERM)
            member.wait(30)
        superlink.stop()


def test_stopping_a_flower_process_leaves_no_child_behind(tmp_path: Path) -> None:
    """A child that ignores SIGTERM (as a flwr-serverapp once did) must not outlive stop()."""
    from federation.deployment import Proc

    child = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
    leader = (f"import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', {child!r}]); "
              "print(p.pid, flush=True); time.sleep(600)")
    proc = Proc([sys.executable, "-c", leader], dict(os.environ), tmp_path / "leader.log")
    deadline = time.monotonic() + 30
    while not proc.output().strip() and time.monotonic() < deadline:
        time.sleep(0.05)
    pid = int(proc.output().split()[0])
    time.sleep(0.5)  # let the child install its SIGTERM handler
    proc.stop(timeout=5)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists() and \
            Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z":
        time.sleep(0.05)
    alive = Path(f"/proc/{pid}").exists() and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    assert not alive, "the child outlived stop()"


@pytest.mark.e2e
def test_a_killed_coordinator_resumes_where_it_stopped(make_federation) -> None:
    port = _free_port()
    coord, homes = make_federation(2, pairs=12, extra=("--round-timeout", "60", "--rounds", "3"))
    ca = coord / "federation" / "fed" / "tls" / "ca.pem"
    agreement = coord / "federation" / "fed" / "agreement.json"
    from tests.federation.conftest import cli
    for home in homes:
        assert cli("--home", str(home), "federation", "join", "fed", "--coordinator", f"127.0.0.1:{port}",
                   "--agreement", str(agreement), "--ca", str(ca)) == 0
    records = [str(h / "federation" / "fed" / "supernode-key.json") for h in homes]
    assert cli("--home", str(coord), "federation", "admit", "fed", *records) == 0
    rounds = coord / "federation" / "fed" / "rounds"
    from federation.deployment import wait_for_port
    coordinator = _rewardnode(coord, "federation", "run", "fed", "--port", str(port), "--timeout", "240")
    wait_for_port(port, 60)
    members = [_rewardnode(h, "federation", "run", "fed", "--timeout", "300") for h in homes]
    try:
        deadline = time.monotonic() + 200
        while not (rounds / "round-0001.manifest.json").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        _kill_everything_of(coord, coordinator)  # the coordinator's machine dies after round 1
        done = sorted(p.name for p in rounds.glob("round-*.manifest.json"))
        assert done and "round-0003.manifest.json" not in done, done
        kept = {name: (rounds / name).read_bytes() for name in done}
        coordinator = _rewardnode(coord, "federation", "run", "fed", "--port", str(port), "--timeout", "240",
                                  "--resume")
        assert coordinator.wait(240) == 0, (coord / "cli-run.log").read_text()[-3000:]
        assert f"resuming federation 'fed' after round {len(done)} of 3" in (coord / "cli-run.log").read_text()
        for m in members:  # the members' SuperNodes waited for the SuperLink to come back
            assert m.wait(60) == 0, (Path(str(m.args[4])) / "cli-run.log").read_text()[-2000:]
    finally:
        for p in (coordinator, *members):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(30)
    assert all((rounds / name).read_bytes() == data for name, data in kept.items())  # not re-run
    outcome = json.loads((rounds / "outcome.json").read_text())
    assert len(outcome["registered"]) == 2, outcome
    for home in homes:
        with Node.open(home) as node:
            [entry] = [m for m in node.store.list_models() if m.kind == "federated"]
            assert verify_model(node, entry.id)["rounds"] == 3


def test_an_object_not_there_yet_is_pulled_again_within_milliseconds(monkeypatch) -> None:
    """Flower retries a message object that is not stored yet after 1, 2, 4 s...; a member or the
    ServerApp asking a moment early lost a second a round. Deployment processes retry after
    PULL_RETRY_S, doubling."""
    from flwr.supercore.inflatable import inflatable_utils

    from federation import deployment

    for fn in (inflatable_utils.pull_objects, inflatable_utils.pull_and_inflate_object_from_tree):
        monkeypatch.setattr(fn, "__kwdefaults__", dict(fn.__kwdefaults__))  # restored after the test
    deployment._fast_object_pulls()
    calls: list[float] = []

    def pull(object_id: str) -> bytes:
        calls.append(time.monotonic())
        if len(calls) <= 3:
            raise inflatable_utils.ObjectUnavailableError(object_id)
        return b"content"

    assert inflatable_utils.pull_objects(["obj"], pull) == {"obj": b"content"}
    waits = [b - a for a, b in zip(calls, calls[1:], strict=False)]
    # Flower's own schedule waits 1 + 2 + 4 s (+-20%) here; this one 0.02 + 0.04 + 0.08 s
    assert len(waits) == 3 and sum(waits) < 2.0, waits
    assert waits[0] >= 0.8 * deployment.PULL_RETRY_S
