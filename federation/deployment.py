"""Flower's deployment engine for a federation: SuperLink, SuperNodes and `flwr run` (TLS: federation.tls).

The coordinator runs `flower-superlink` (TLS with the CA and server certificate of federation.tls) and
submits the Flower app with `flwr run`; each member runs `flower-supernode` for its own node home
(`--node-config home=...`), and the SuperNode starts a ClientApp process per message that trains
on that home's store. Processes are started in their own session and stopped by process group.
SuperNode authentication is on: the SuperLink lets in only SuperNodes whose P-384 keys the
coordinator registered (`register_supernode`; which keys, is `federation.admission`'s business).

Members run `python -m federation.deployment supernode ...`: the stock `flower-supernode` with four
changes:

- polling: Flower 1.41's SuperNode sleeps a hard-coded 3 s whenever a pull finds no message, which
  alone adds up to 3 s per round; the sleep is capped at `POLL_S` (`_fast_poll`), SuperExec's task
  poll is POLL_S / 2 (FLWR_SUPEREXEC_TASK_POLL_INTERVAL), and the ServerApp pulls replies every 50 ms
  (federation.apps.send_and_receive) instead of HttpGrid's 3 s;
- object pulls: a message object asked for before it is stored is retried after `PULL_RETRY_S`, not 1 s
  (`_fast_object_pulls`, also in the ClientApp and ServerApp processes);
- heartbeat: `HEARTBEAT_S` instead of 30 s, so a crashed member is seen offline (and may rejoin) sooner;
- launches: its SuperExec (`python -m federation.deployment superexec`) forks ClientApp tasks from a
  warm fork server instead of starting a `flwr-clientapp` process per message, and pins them to
  rewardnode's ClientApp (`_warm_launches`, `_pin_clientapp`).

The coordinator runs `python -m federation.deployment superlink ...`: the stock `flower-superlink`, whose
ServerApp processes (`... serverapp`) run only the run the coordinator pinned (`pin_run`): Flower's
control API takes `flwr run` from whoever reaches the SuperLink's port, and a stock SuperLink would
install and import the app bundle (FAB) of any such run, so anyone who can reach the port could run
code on the coordinator. Here a ServerApp process refuses a FAB whose sha256 differs from the pinned
one before anything of it is installed, refuses a run config that differs from the pinned one, and
claims the pin, so a copy of the coordinator's own run submitted next to it is refused too
(`_pin_serverapp`). Beyond that, the SuperLink answers clients on other machines on its Fleet API only
(the members' SuperNodes); its control API (`flwr run`, `flwr stop`, `flwr supernode register`) and its
runtime API (the ServerApp processes) answer loopback clients only (`MembersReachFleetOnly`).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from federation.errors import FederationError
from federation.tls import TlsFiles

POLL_S = 0.2
"""What the SuperNode sleeps between empty pulls (Flower's default is 3 s)."""
PULL_RETRY_S = 0.02
"""First retry of a message object that is not there yet (Flower's default is 1 s; see _fast_object_pulls)."""
PULL_RETRY_CAP_S = 1.0
"""The retries' doubling stops here (Flower's default is 10 s)."""
SUPERLINK_START_S = 60.0
"""How long `start_superlink` waits for the SuperLink to listen."""
HEARTBEAT_S = 10
"""The heartbeat interval a member's SuperNode announces (Flower's default is 30 s, its minimum 10 s). The
SuperLink declares a node offline after 2 missed intervals, and only then lets a restarted SuperNode with
the same key in again: 20 s after a crash instead of a minute."""

APP_PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "rewardnode-federation"
version = "1.0.0"
description = "rewardnode federated reward-model rounds (signed contributions, robust aggregation)"
license = "Apache-2.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "rewardnode"

[tool.flwr.app.components]
serverapp = "{serverapp}"
clientapp = "{clientapp}"

[tool.flwr.app.config]
home = ""
federation = ""
straggler-wait = "10"
resume = "0"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def flower_env(flwr_home: Path) -> dict[str, str]:
    """The environment every Flower process gets: no telemetry, no update check, venv bin on PATH."""
    env = dict(os.environ)
    env.update({"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_HOME": str(flwr_home),
                "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
                # SuperExec polls for app tasks every 1 s by default; a round pays it on both sides.
                "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": str(POLL_S / 2),
                "PATH": str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")})
    return env


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


class Proc:
    """A Flower process in its own session, stopped (with its children) by process group."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._out = log.open("ab")
        self._offset = self._out.tell()  # where this process's output starts in the (appended) log
        self.popen = subprocess.Popen(args, env=env, stdout=self._out, stderr=subprocess.STDOUT,
                                      start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        """What this process wrote to its log so far."""
        with self.log.open("rb") as f:
            f.seek(self._offset)
            return f.read().decode("utf-8", "replace")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole group this process leads (its SuperExec and app children too)."""
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the group, give the leader `timeout` seconds, then SIGKILL whatever is left of the group
        (a `flwr-serverapp` child was seen to outlive its SuperLink's SIGTERM)."""
        self.kill(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        self.kill(signal.SIGKILL)
        self.popen.wait(timeout)
        self._out.close()


def wait_for_port(port: int, timeout_s: float = 60.0, proc: Proc | None = None) -> None:
    """Wait until something listens on 127.0.0.1:port; with `proc`, fail as soon as that process exited
    (FederationError with the end of its log) instead of waiting out the timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.popen.poll() is not None:
            code = proc.popen.returncode
            raise FederationError(f"the process logging to {proc.log} exited ({code}) before anything "
                                  f"listened on 127.0.0.1:{port}: {last_error(proc.output())}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s:g}s; see the process log")


def last_error(output: str) -> str:
    """The line of a Flower process's log that says why it stopped: the last one naming an error, else
    the last line (shortened to one line of ~300 characters)."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    line = (errors or lines or ["(its log is empty)"])[-1]
    return line if len(line) <= 300 else line[:297] + "..."


def check_port_free(host: str, port: int) -> None:
    """Raise FederationError if this machine cannot listen on host:port (another process listens there,
    say), before a SuperLink is started that would fail to bind it while its port looks taken."""
    import errno

    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is out of range; give a port in 1-65535")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.create_server((host, port), family=family):  # SO_REUSEADDR: TIME_WAIT is no conflict
            pass
    except OSError as exc:
        fixes = {errno.EADDRINUSE: "another process listens there; stop it or pick another port",
                 errno.EACCES: "ports below 1024 need root; pick a port from 1024 up"}
        fix = fixes.get(exc.errno or 0, "pick another port or address")
        raise FederationError(f"cannot listen on {host}:{port} ({exc.strerror or exc}): {fix}") from None


def start_superlink(workdir: Path, port: int, tls: TlsFiles | None, host: str = "127.0.0.1", *,
                    supernode_auth: bool = True) -> Proc:
    """`flower-superlink` on host:port (TLS unless tls is None), no runtime dependency installation; with
    `supernode_auth` only SuperNodes whose keys were registered (`register_supernode`) may connect. Its
    ServerApps run only a run pinned with `pin_run(workdir, ...)` (see the module docstring). Raises
    FederationError if the port is taken or the SuperLink exits before it listens."""
    check_port_free(host, port)
    args = [sys.executable, "-m", "federation.deployment", "superlink",
            "--disable-runtime-dependency-installation", "--host", host, "--port", str(port)]
    if supernode_auth:
        args.append("--enable-supernode-auth")
    if tls is None:
        args.append("--insecure")
    else:
        args += ["--ssl-ca-certfile", str(tls.ca_cert), "--ssl-certfile", str(tls.server_cert),
                 "--ssl-keyfile", str(tls.server_key)]
    env = flower_env(workdir / "flwr") | {PIN_ENV: str((workdir / PIN_FILE).resolve())}
    proc = Proc(args, env, workdir / "superlink.log")
    try:
        wait_for_port(port, SUPERLINK_START_S, proc=proc)
    except TimeoutError:
        proc.stop()
        raise FederationError(f"the SuperLink did not listen on 127.0.0.1:{port} within {SUPERLINK_START_S:g}"
                              f" s ({last_error(proc.output())}); see {proc.log}") from None
    except BaseException:
        proc.stop()
        raise
    return proc


PIN_ENV = "REWARDNODE_SERVERAPP_PIN"
PIN_FILE = "serverapp-pin.json"


REMOTE_PATHS = ("/v1/fleet/",)
"""What a client on another machine may reach on the coordinator's SuperLink: the Fleet API, which the
members' SuperNodes use (SuperNode authentication admits only registered keys there)."""


def is_loopback(client: tuple[str, int] | list[Any] | None) -> bool:
    """True when an ASGI scope's client address is this machine's loopback (IPv4, IPv6, IPv4-mapped)."""
    if not client:
        return False
    try:
        address = ipaddress.ip_address(str(client[0]).split("%")[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


class MembersReachFleetOnly:
    """ASGI middleware on the coordinator's SuperLink: a request from another machine may reach
    REMOTE_PATHS only; anything else (control and runtime APIs) gets 403 unless it comes from loopback.
    Behind a reverse proxy on the same machine every client looks local: expose the port directly."""

    FORBIDDEN = (b'{"detail": "this SuperLink answers its control and runtime APIs on the coordinator\'s own '
                 b'machine only (127.0.0.1); members reach its Fleet API"}')

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket") and not is_loopback(scope.get("client")) \
                and not str(scope.get("path", "")).startswith(REMOTE_PATHS):
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            await send({"type": "http.response.start", "status": 403,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(self.FORBIDDEN)).encode())]})
            await send({"type": "http.response.body", "body": self.FORBIDDEN})
            return
        await self.app(scope, receive, send)


class RunRefused(RuntimeError):
    """A ServerApp process was handed a run the coordinator did not pin."""


def pin_run(workdir: Path, app_dir: Path, run_config: dict[str, str]) -> str:
    """Pin the next run of the SuperLink started in workdir to the FAB `flwr run` builds from app_dir and to
    run_config; returns the FAB's sha256. Call it right before `flwr_run`: one run may claim a pin."""
    from flwr.cli.build import build_fab_from_disk

    fab_sha256 = hashlib.sha256(build_fab_from_disk(app_dir)).hexdigest()
    pin = workdir / PIN_FILE
    tmp = pin.with_suffix(".tmp")
    tmp.write_text(json.dumps({"fab_sha256": fab_sha256, "run_config": run_config}))
    os.replace(tmp, pin)
    return fab_sha256


def _read_pin() -> tuple[Path, dict[str, Any]]:
    where = os.environ.get(PIN_ENV, "")
    path = Path(where)
    if not where or not path.is_file():
        raise RunRefused(f"no pinned run ({PIN_ENV} = {where!r}): this SuperLink runs "
                         "only the run its coordinator pinned (`rewardnode federation run`), and that run "
                         "has started or was never pinned")
    pin: dict[str, Any] = json.loads(path.read_text())
    return path, pin


def check_pinned_fab(fab_content: bytes) -> None:
    """Raise RunRefused unless fab_content is the pinned FAB (called before anything of it is installed)."""
    _, pin = _read_pin()
    digest = hashlib.sha256(fab_content).hexdigest()
    if digest != pin["fab_sha256"]:
        raise RunRefused(f"refused a run whose app bundle (sha256 {digest[:16]}...) is not the one this "
                         f"coordinator pinned ({pin['fab_sha256'][:16]}...); someone else submitted it")


def claim_pinned_config(override_config: dict[str, Any]) -> None:
    """Raise RunRefused unless override_config is the pinned run config; then claim the pin (one run only)."""
    path, pin = _read_pin()
    if {k: str(v) for k, v in override_config.items()} != pin["run_config"]:
        raise RunRefused("refused a run whose run config is not the one this coordinator pinned; "
                         "someone else submitted it")
    try:
        os.replace(path, path.with_suffix(".claimed"))  # atomic: of two ServerApps one finds no pin
    except FileNotFoundError:
        raise RunRefused("refused a second copy of the pinned run: another ServerApp claimed it "
                         "first") from None


def start_supernode(workdir: Path, superlink: str, ca_cert: Path | None, node_config: dict[str, str],
                    runtime_port: int | None = None, auth_key: Path | None = None) -> Proc:
    """`flower-supernode` (with the fast poll) serving one node home; `auth_key` is its P-384 private key
    (OpenSSH file) when the SuperLink authenticates SuperNodes."""
    config = " ".join(f"{k}={_toml_str(v)}" for k, v in node_config.items())
    args = [sys.executable, "-m", "federation.deployment", "supernode", "--superlink", superlink,
            "--port", str(runtime_port or free_port()), "--node-config", config]
    if auth_key is not None and ca_cert is None:
        raise ValueError("SuperNode authentication needs TLS (Flower refuses it over --insecure): pass the "
                         "SuperLink's CA certificate as ca_cert")
    args += ["--insecure"] if ca_cert is None else ["--root-certificates", str(ca_cert)]
    if auth_key is not None:
        args += ["--auth-supernode-private-key", str(auth_key)]
    return Proc(args, flower_env(workdir / "flwr"), workdir / "supernode.log")


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def register_supernode(workdir: Path, public_key: Path, name: str = "") -> int:
    """`flwr supernode register` on the connection `write_connection` wrote; returns Flower's node id."""
    args = [_bin("flwr"), "supernode", "register", str(public_key), "federation", "--format", "json"]
    if name:
        args += ["--name", name]
    done = subprocess.run(args, env=flower_env(workdir / "flwr"), capture_output=True, text=True, timeout=120,
                          cwd=workdir)
    try:
        node_id = int(json.loads(done.stdout)["node-id"])
    except (ValueError, KeyError, TypeError):
        raise RuntimeError(f"the SuperLink did not register the SuperNode key {public_key} (exit "
                           f"{done.returncode}): {(done.stdout + done.stderr).strip()[-500:]}") from None
    return node_id


def supernode_refused(proc: Proc) -> bool:
    """Whether a SuperNode process ended because the SuperLink refused it (e.g. its key is not registered):
    Flower logs its exit code 305 (SUPERNODE_CONNECTION_ERROR) and the process exits with status 1."""
    return proc.popen.poll() not in (None, 0) and "Exit Code: 305" in proc.output()


def write_app(app_dir: Path, serverapp: str, clientapp: str) -> Path:
    """The Flower app folder `flwr run` bundles: only a pyproject naming the two components."""
    app_dir.mkdir(parents=True, exist_ok=True)
    (app_dir / "pyproject.toml").write_text(APP_PYPROJECT.format(serverapp=serverapp, clientapp=clientapp))
    (app_dir / "rewardnode_federation_app.py").write_text('"""The components live in the rewardnode package."""\n')
    return app_dir


def write_connection(flwr_home: Path, superlink: str, ca_cert: Path | None) -> None:
    """FLWR_HOME/config.toml with one connection named "federation"."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    lines = ['[superlink]', 'default = "federation"', '', '[superlink.federation]', f'address = "{superlink}"']
    lines += ["insecure = true"] if ca_cert is None else [f"root-certificates = {_toml_str(str(ca_cert))}"]
    (flwr_home / "config.toml").write_text("\n".join(lines) + "\n")


def flwr_run(workdir: Path, app_dir: Path, run_config: dict[str, str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    """Submit the app and stream its logs until the run ends."""
    config = " ".join(f"{k}={_toml_str(v)}" for k, v in run_config.items())
    return subprocess.run([_bin("flwr"), "run", str(app_dir), "federation", "--stream", "--run-config", config],
                          env=flower_env(workdir / "flwr"), capture_output=True, text=True, timeout=timeout_s,
                          cwd=app_dir)


# --- the SuperNode with a short poll ---------------------------------------------------------------


class _FastTime:
    """Stands in for the `time` module inside flwr.supernode.start_client_internal: caps its sleeps."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        time.sleep(min(seconds, POLL_S))


def _fast_poll() -> None:
    import flwr.supercore.heartbeat as heartbeat
    import flwr.supernode.fleet_http_connection as connection
    import flwr.supernode.start_client_internal as internal

    setattr(internal, "time", _FastTime())  # noqa: B010 (patch one module's view of `time`)
    for module in (heartbeat, connection):
        setattr(module, "HEARTBEAT_DEFAULT_INTERVAL", HEARTBEAT_S)  # noqa: B010


def _fast_object_pulls() -> None:
    """Flower 1.41 moves a message's contents as objects pulled one by one; an object not stored yet at the
    other end (a message is visible before its last object has been pushed) is retried after 1 s, doubling
    up to 10 s. A round waits for that at up to three hops (SuperNode, ClientApp, ServerApp), so a member
    that asks a few milliseconds early pays a whole second. Here the first retry comes after
    `PULL_RETRY_S`, doubling up to `PULL_RETRY_CAP_S`."""
    from flwr.supercore.inflatable import inflatable_utils

    for fn in (inflatable_utils.pull_objects, inflatable_utils.pull_and_inflate_object_from_tree):
        defaults = fn.__kwdefaults__
        if defaults is None or not {"initial_backoff", "backoff_cap"} <= defaults.keys():
            raise RuntimeError(f"flwr's {fn.__name__} takes no initial_backoff/backoff_cap keyword; "
                               "this flwr is not the 1.41 rewardnode pins")
        defaults["initial_backoff"], defaults["backoff_cap"] = PULL_RETRY_S, PULL_RETRY_CAP_S


def _warm_launches() -> None:
    """SuperExec starts a fresh `flwr-clientapp` process per message: Python, flwr and the app imported
    again each round (about a second of CPU per member per round). Here ClientApp tasks are forked from a
    multiprocessing fork server that imported all of that once; each child runs the same
    `run_clientapp` the `flwr-clientapp` command runs, pinned to rewardnode's ClientApp
    (`_pin_clientapp`). Other task types are refused: a member runs nothing else."""
    import multiprocessing
    from multiprocessing import forkserver

    from flwr.supercore.constant import TaskType
    from flwr.supercore.superexec.executor import subprocess_executor
    from flwr.supercore.superexec.executor.types import LaunchResult

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["flwr.supernode.runtime.run_clientapp", "federation.worker"])
    forkserver.ensure_running()  # now, not in the first round
    def launch(self: Any, spec: Any) -> Any:
        if spec.task_type != TaskType.CLIENT_APP:
            return LaunchResult.failed(f"a rewardnode member runs ClientApps only, not {spec.task_type}")
        multiprocessing.active_children()  # reap the finished ones
        ctx.Process(target=_run_clientapp, daemon=True, name="clientapp",
                    args=(spec.runtime_api_address, spec.token, spec.insecure, spec.root_certificates_path,
                          spec.parent_pid)).start()
        return LaunchResult.accepted()

    setattr(subprocess_executor.SubprocessExecutor, "launch", launch)  # noqa: B010


def _pin_clientapp() -> None:
    """Run rewardnode's own ClientApp (federation.worker) whatever app bundle (FAB) the SuperLink sends:
    the FAB is neither installed nor imported, so no code from the network runs on a member, even if
    someone else submitted a run to the coordinator's SuperLink."""
    import flwr.supernode.runtime.run_clientapp as runtime

    from federation.worker import client_app

    setattr(runtime, "install_from_fab", lambda *_a, **_k: None)  # noqa: B010
    setattr(runtime, "get_load_client_app_fn", lambda **_k: lambda *_a: client_app)  # noqa: B010


def _run_clientapp(address: str, token: str, insecure: bool, root_certificates: str | None,
                   parent_pid: int | None) -> None:
    from flwr.supernode.runtime.run_clientapp import run_clientapp

    _pin_clientapp()
    _fast_object_pulls()
    certificates = None if insecure or root_certificates is None else Path(root_certificates).read_bytes()
    run_clientapp(runtime_api_address=address, token=token, insecure=insecure, certificates=certificates,
                  parent_pid=parent_pid, runtime_dependency_install=False)


class _LaunchAs:
    """Stands in for the `subprocess` module inside one flwr module: Popen of `command` runs
    `python -m federation.deployment mode` with the same arguments instead."""

    def __init__(self, command: str, mode: str) -> None:
        self.command, self.mode = command, mode

    def __getattr__(self, name: str) -> Any:
        return getattr(subprocess, name)

    def Popen(self, args: list[str], *rest: Any, **kwargs: Any) -> subprocess.Popen[bytes]:  # noqa: N802
        if args and args[0] == self.command:
            args = [sys.executable, "-m", "federation.deployment", self.mode, *args[1:]]
        return subprocess.Popen(args, *rest, **kwargs)


def _pin_serverapp() -> None:
    """Make this process's `run_serverapp` check the pin (see the module docstring) before installing the
    FAB it pulled, and before running it with the run config it pulled."""
    import importlib

    # import_module: the package flwr.superlink.runtime exports a function of the module's name
    runtime = importlib.import_module("flwr.superlink.runtime.run_serverapp")

    install = getattr(runtime, "install_from_fab")  # noqa: B009 (not in the module's __all__)
    fuse = getattr(runtime, "get_fused_config_from_dir")  # noqa: B009

    def checked_install(content: bytes, *args: Any, **kwargs: Any) -> Any:
        check_pinned_fab(content)
        return install(content, *args, **kwargs)

    def checked_config(project_dir: Path, override_config: dict[str, Any]) -> Any:
        claim_pinned_config(override_config)
        return fuse(project_dir, override_config)

    setattr(runtime, "install_from_fab", checked_install)  # noqa: B010
    setattr(runtime, "get_fused_config_from_dir", checked_config)  # noqa: B010


def _guard_superlink() -> Any:
    """Patch this process's `flower-superlink` (returned: its module): its FastAPI app gets
    `MembersReachFleetOnly`, and its SuperExec is `python -m federation.deployment serverexec`."""
    import importlib

    import flwr.superlink.main as superlink_main

    superlink = importlib.import_module("flwr.superlink.cli.flower_superlink")  # the module, not the function
    create_app = superlink_main.create_app

    def create_guarded_app(*args: Any, **kwargs: Any) -> Any:
        app = create_app(*args, **kwargs)
        app.add_middleware(MembersReachFleetOnly)
        return app

    setattr(superlink_main, "create_app", create_guarded_app)  # noqa: B010
    setattr(superlink, "subprocess", _LaunchAs("flower-superexec", "serverexec"))  # noqa: B010
    return superlink


def main(argv: list[str]) -> int:
    if argv and argv[0] == "superlink":  # the coordinator: ServerApps through `serverexec` -> `serverapp`
        superlink = _guard_superlink()
        sys.argv = ["flower-superlink", *argv[1:]]
        superlink.flower_superlink()
        return 0
    if argv and argv[0] == "serverexec":
        from flwr.supercore.cli.flower_superexec import flower_superexec
        from flwr.supercore.superexec.executor import subprocess_executor

        setattr(subprocess_executor, "subprocess", _LaunchAs("flwr-serverapp", "serverapp"))  # noqa: B010
        sys.argv = ["flower-superexec", *argv[1:]]
        flower_superexec()
        return 0
    if argv and argv[0] == "serverapp":
        _pin_serverapp()
        _fast_object_pulls()
        from flwr.superlink.cli.flwr_serverapp import flwr_serverapp

        sys.argv = ["flwr-serverapp", *argv[1:]]
        flwr_serverapp()
        return 0
    if argv and argv[0] == "superexec":
        _warm_launches()
        from flwr.supercore.cli.flower_superexec import flower_superexec

        sys.argv = ["flower-superexec", *argv[1:]]
        flower_superexec()
        return 0
    if not argv or argv[0] != "supernode":
        print("usage: python -m federation.deployment supernode|superexec|superlink|serverexec|serverapp "
              "[ARGS of the Flower command it wraps]",
              file=sys.stderr)
        return 2
    _fast_poll()
    _fast_object_pulls()
    import flwr.supernode.start_client_internal as internal

    setattr(internal, "subprocess", _LaunchAs("flower-superexec", "superexec"))  # noqa: B010
    from flwr.supernode.cli import flower_supernode

    sys.argv = ["flower-supernode", *argv[1:]]
    flower_supernode()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
