"""The coordinator's SuperLink runs only the run its coordinator pinned (federation.deployment.pin_run).

Flower's control API takes `flwr run` from whoever reaches the SuperLink's port; a stock SuperLink installs
and imports the app bundle of any such run. Here a run whose bundle or run config differs from the pin,
or a second copy of the pinned run, is refused before any of its code is loaded.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from federation import deployment
from federation.deployment import RunRefused, check_pinned_fab, claim_pinned_config, pin_run

ROGUE_APP = '''\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "rogue"
version = "1.0.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "someone"

[tool.flwr.app.components]
serverapp = "rogue:app"
clientapp = "rogue:app"

[tool.flwr.app.config]
marker = ""
'''

ROGUE_CODE = '''\
from pathlib import Path

from flwr.serverapp import ServerApp

app = ServerApp()


@app.main()
def main(grid, context):
    Path(context.run_config["marker"]).write_text("code from the network ran on the coordinator")
'''


def _rogue_app(tmp_path: Path) -> Path:
    app = tmp_path / "rogue"
    app.mkdir()
    (app / "pyproject.toml").write_text(ROGUE_APP)
    (app / "rogue.py").write_text(ROGUE_CODE)
    return app


def test_pin_checks_the_bundle_and_the_config_and_is_claimed_once(tmp_path: Path, monkeypatch) -> None:
    app = _rogue_app(tmp_path)
    fab_sha256 = pin_run(tmp_path, app, {"marker": "x"})
    monkeypatch.setenv(deployment.PIN_ENV, str(tmp_path / deployment.PIN_FILE))
    from flwr.cli.build import build_fab_from_disk

    check_pinned_fab(build_fab_from_disk(app))  # the very bundle `flwr run` builds from that folder
    import hashlib

    assert hashlib.sha256(build_fab_from_disk(app)).hexdigest() == fab_sha256
    with pytest.raises(RunRefused, match="app bundle"):
        check_pinned_fab(b"another bundle")
    with pytest.raises(RunRefused, match="run config"):
        claim_pinned_config({"marker": "y"})
    claim_pinned_config({"marker": "x"})
    with pytest.raises(RunRefused, match="no pinned run"):  # claimed: a second copy finds no pin
        claim_pinned_config({"marker": "x"})
    monkeypatch.delenv(deployment.PIN_ENV)
    with pytest.raises(RunRefused, match="no pinned run"):
        check_pinned_fab(build_fab_from_disk(app))


@pytest.mark.slow
@pytest.mark.parametrize("pinned", ["nothing", "another-config", "this-run"])
def test_a_run_someone_else_submits_never_runs_its_code(tmp_path: Path, pinned: str) -> None:
    """`flwr run` of a foreign app against the coordinator's SuperLink: refused unless it is the pinned run
    (the pinned case shows that the same submission would otherwise run its code)."""
    from federation.deployment import flower_env, free_port, start_superlink, write_connection

    app = _rogue_app(tmp_path)
    marker = tmp_path / "marker.txt"
    work = tmp_path / "link"
    work.mkdir()
    if pinned != "nothing":
        pin_run(work, app, {"marker": str(marker) if pinned == "this-run" else str(tmp_path / "other.txt")})
    port = free_port()
    superlink = start_superlink(work, port, None, supernode_auth=False)
    try:
        write_connection(work / "flwr", f"127.0.0.1:{port}", None)
        done = subprocess.run([deployment._bin("flwr"), "run", str(app), "federation", "--stream", "--run-config",
                               f'marker="{marker}"'], env=flower_env(work / "flwr"), capture_output=True, text=True,
                              timeout=120, cwd=app)
    finally:
        superlink.stop()
    log = (work / "superlink.log").read_text()
    if pinned == "this-run":
        assert marker.read_text().startswith("code from the network"), done.stdout + done.stderr + log
    else:
        assert not marker.exists(), "the SuperLink ran a run nobody pinned"
        assert "RunRefused" in done.stdout + done.stderr + log, done.stdout + done.stderr + log
    assert not os.environ.get(deployment.PIN_ENV)  # the pin lives in the SuperLink's environment only
