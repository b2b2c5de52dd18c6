"""The coordinator's SuperLink: other machines reach its Fleet API only, and it runs only the run its
coordinator pinned (federation.deployment.pin_run).

Flower's control API takes `flwr run` from whoever reaches the SuperLink's port; a stock SuperLink installs
and imports the app bundle of any such run. Here the control and runtime APIs answer loopback clients
only, and a run whose bundle or run config differs from the pin, or a second copy of the pinned run, is
refused before any of its code is loaded.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from federation import deployment
from federation.deployment import (
    MembersReachFleetOnly,
    RunRefused,
    check_pinned_fab,
    claim_pinned_config,
    is_loopback,
    pin_run,
)
from tests.federation.conftest import online_supernodes

ROGUE_CODE = '''\
from pathlib import Path

from flwr.serverapp import ServerApp

app = ServerApp()


@app.main()
def main(grid, context):
    Path(context.run_config["home"]).write_text("code from the network ran on the coordinator")
'''


def _rogue_app(tmp_path: Path) -> Path:
    """An app that looks like rewardnode's (the same pyproject) but brings its own ServerApp, which writes a
    file at the run config's `home`."""
    app = deployment.write_app(tmp_path / "rogue", "rogue:app", "rogue:app")
    (app / "rogue.py").write_text(ROGUE_CODE)
    return app


def test_pin_checks_the_bundle_and_the_config_and_is_claimed_once(tmp_path: Path, monkeypatch) -> None:
    app = _rogue_app(tmp_path)
    fab_sha256 = pin_run(tmp_path, app, {"home": "x"})
    monkeypatch.setenv(deployment.PIN_ENV, str(tmp_path / deployment.PIN_FILE))
    from flwr.cli.build import build_fab_from_disk

    check_pinned_fab(build_fab_from_disk(app))  # the very bundle `flwr run` builds from that folder
    import hashlib

    assert hashlib.sha256(build_fab_from_disk(app)).hexdigest() == fab_sha256
    with pytest.raises(RunRefused, match="app bundle"):
        check_pinned_fab(b"another bundle")
    with pytest.raises(RunRefused, match="run config"):
        claim_pinned_config({"home": "y"})
    claim_pinned_config({"home": "x"})
    with pytest.raises(RunRefused, match="no pinned run"):  # claimed: a second copy finds no pin
        claim_pinned_config({"home": "x"})
    monkeypatch.delenv(deployment.PIN_ENV)
    with pytest.raises(RunRefused, match="no pinned run"):
        check_pinned_fab(build_fab_from_disk(app))


@pytest.mark.slow
@pytest.mark.parametrize("pinned", ["nothing", "another-config", "this-run"])
def test_a_run_someone_else_submits_never_runs_its_code(tmp_path: Path, pinned: str) -> None:
    """`flwr run` of a foreign app against the coordinator's SuperLink: refused unless it is the pinned run
    (the pinned case shows that the same submission would otherwise run its code)."""
    from federation.deployment import flwr_run, free_port, start_superlink, write_connection

    app = _rogue_app(tmp_path)
    marker = tmp_path / "marker.txt"
    work = tmp_path / "link"
    work.mkdir()
    if pinned != "nothing":
        pin_run(work, app, {"home": str(marker) if pinned == "this-run" else str(tmp_path / "other.txt")})
    port = free_port()
    superlink = start_superlink(work, port, None, supernode_auth=False)
    try:
        write_connection(work / "flwr", f"127.0.0.1:{port}", None)
        done = flwr_run(work, app, {"home": str(marker)}, timeout_s=120)
    finally:
        superlink.stop()
    log = (work / "superlink.log").read_text()
    if pinned == "this-run":
        assert marker.read_text().startswith("code from the network"), done.stdout + done.stderr + log
    else:
        assert not marker.exists(), "the SuperLink ran a run nobody pinned"
        assert "RunRefused" in done.stdout + done.stderr + log, done.stdout + done.stderr + log
    assert not os.environ.get(deployment.PIN_ENV)  # the pin lives in the SuperLink's environment only


def _call(middleware: MembersReachFleetOnly, client: tuple[str, int] | None, path: str) -> list[dict]:
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(middleware({"type": "http", "client": client, "path": path}, None, send))
    return sent


def test_other_machines_reach_the_fleet_api_only() -> None:
    reached: list[str] = []

    async def app(scope, receive, send) -> None:
        reached.append(scope["path"])

    guard = MembersReachFleetOnly(app)
    remote = ("192.0.2.7", 40000)
    assert _call(guard, remote, "/v1/fleet/pull-messages") == []  # a member's SuperNode: passed on
    refused = _call(guard, remote, "/v1/control/start-run")
    assert refused[0]["status"] == 403 and b"control and runtime APIs" in refused[1]["body"]
    assert _call(guard, remote, "/v1/runtime/pull-task-input")[0]["status"] == 403
    assert _call(guard, None, "/v1/control/start-run")[0]["status"] == 403  # unknown client: not local
    for local in (("127.0.0.1", 1), ("::1", 1), ("::ffff:127.0.0.1", 1)):
        assert _call(guard, local, "/v1/control/start-run") == []
    assert reached == ["/v1/fleet/pull-messages"] + ["/v1/control/start-run"] * 3
    assert not is_loopback(("::ffff:192.0.2.7", 1)) and not is_loopback(("not-an-address", 1))


def _own_address() -> str | None:
    """This machine's address on its default route, if it has one besides loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def _post(url: str) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=b"{}", headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.mark.slow
def test_the_real_superlink_answers_its_control_api_on_loopback_only(tmp_path: Path) -> None:
    from federation.deployment import free_port, start_superlink, start_supernode, write_connection

    address = _own_address()
    if address is None:
        pytest.skip("this machine has no address besides loopback to play the other machine from")
    port = free_port()
    superlink = start_superlink(tmp_path, port, None, host="0.0.0.0", supernode_auth=False)
    home = tmp_path / "member"
    home.mkdir()  # the member's SuperNode (below) writes its log there
    member = start_supernode(home, f"{address}:{port}", None, {"home": str(home)})
    try:
        status, body = _post(f"http://{address}:{port}/v1/control/list-runs")
        assert status == 403 and "control and runtime APIs" in json.loads(body)["detail"]
        status, body = _post(f"http://127.0.0.1:{port}/v1/control/list-runs")
        assert status != 403, body  # the same request from the coordinator's machine reaches Flower
        write_connection(tmp_path / "flwr", f"127.0.0.1:{port}", None)
        deadline = time.monotonic() + 60
        while not online_supernodes(tmp_path) and time.monotonic() < deadline:  # dialing the outside address
            time.sleep(0.5)
        assert online_supernodes(tmp_path), \
            "a SuperNode on the outside address never came online: the Fleet API was refused"
    finally:
        member.stop()
        superlink.stop()
