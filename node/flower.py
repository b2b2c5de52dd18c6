"""The deployment engine on a node: the coordinator's SuperLink and the members' SuperNodes (Flower).

Coordinator (`run_coordinator`): starts `flower-superlink` with TLS and SuperNode authentication,
registers the SuperNode keys of the members it admitted, pins the run and submits it with `flwr run`
(the SuperLink's ServerApp runs that run only: federation.deployment) and waits for the rounds.
Member (`run_member`): runs `flower-supernode` with its own P-384 key and a warm worker until the
federated model lands in its registry.

Admission (federation.admission): `rewardnode federation join` makes the member's SuperNode key
and a record binding it to the node's Ed25519 identity; the coordinator admits that record with
`rewardnode federation admit NAME FILE` (it must be signed by a member of the agreement).

Files under the node home (besides node.federated's):

    federation/<name>/ca.pem               member: the coordinator's CA certificate (`join --ca`)
    federation/<name>/supernode.key        member: P-384 SuperNode key (OpenSSH, mode 0600)
    federation/<name>/supernode-key.json   member: the signed record to send to the coordinator
    federation/<name>/supernodes/*.json    coordinator: admitted records, one per member
    federation/<name>/tls/                 coordinator: CA + SuperLink certificate and key
    federation/<name>/run/                 logs of the Flower processes
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from federation.admission import SupernodeKey, ensure_supernode_key, sign_supernode_key, verify_supernode_key
from federation.agreement import Agreement, replace_file
from federation.errors import FederationError
from node.app import Node
from node.errors import NodeError
from node.federated import (
    MODEL_KIND,
    NodeParticipant,
    agreement_for,
    coordinator_state,
    federation_dir,
    finished_rounds,
    read_join,
    save_round,
)
from protocol.identity import Identity

log = logging.getLogger(__name__)

SUPERNODE_KEY_FILE = "supernode.key"
CA_FILE = "ca.pem"
"""Member: the coordinator's CA certificate, as `federation join --ca` keeps it."""
SUPERNODE_RECORD_FILE = "supernode-key.json"
ADMITTED_DIR = "supernodes"
RETRY_S = 2.0
"""How long a member waits before starting its SuperNode again after the SuperLink refused it or it died."""
QUICK_EXIT_S = 10.0
MAX_QUICK_EXITS = 3
"""A member gives up once its SuperNode died this many times in a row within QUICK_EXIT_S of starting."""
FINALIZE_GRACE_S = 5.0
"""How long a member keeps its SuperNode up after pushing its finalize reply (see _wait_finalize_sent)."""

TLS_DIR = "tls"
OUTCOME_FILE = "outcome.json"
RUN_CONFIG_HOME = "home"
RUN_CONFIG_FEDERATION = "federation"
RUN_CONFIG_STRAGGLER = "straggler-wait"
RUN_CONFIG_RESUME = "resume"
_participants: dict[tuple[str, str], NodeParticipant] = {}


def _participant_for(context: Any) -> NodeParticipant:
    """The member this SuperNode serves: node home from --node-config, federation from the run config."""
    home, name = str(context.node_config[RUN_CONFIG_HOME]), str(context.run_config[RUN_CONFIG_FEDERATION])
    key = (home, name)
    if key not in _participants:
        node = Node.open(home)
        _participants[key] = NodeParticipant(node, agreement_for(node.config.home, name))
    return _participants[key]


def _coordinator_for(context: Any) -> Any:
    node = Node.open(str(context.run_config[RUN_CONFIG_HOME]))
    name = str(context.run_config[RUN_CONFIG_FEDERATION])
    agreement = agreement_for(node.config.home, name)
    state = coordinator_state(node, agreement, resume=str(context.run_config.get(RUN_CONFIG_RESUME, "")) == "1")
    state.node = node  # kept for the round callbacks
    return state


def _server_app() -> Any:
    from federation.apps import STRAGGLER_WAIT_S, make_server_app

    holder: dict[str, Any] = {}

    def state_for(context: Any) -> Any:
        holder["state"] = _coordinator_for(context)
        return holder["state"]

    def on_round(result: Any) -> None:
        state = holder["state"]
        save_round(state.node, state.agreement, result)

    def on_done(outcome: Any) -> None:
        state = holder["state"]
        path = federation_dir(state.node.config.home, state.agreement.name) / "rounds" / OUTCOME_FILE
        path.write_text(json.dumps({
            "rounds": len(outcome.rounds), "registered": {str(k): v for k, v in outcome.registered.items()},
            "round_seconds": list(outcome.round_seconds), "train_seconds": list(outcome.train_seconds),
            "crypto_seconds": list(outcome.crypto_seconds),
            "accepted": [len(r.accepted) for r in outcome.rounds],
            "rejected": [[x.to_dict() for x in r.rejected] for r in outcome.rounds]}, indent=2) + "\n")

    def straggler_for(context: Any) -> float:
        return float(context.run_config.get(RUN_CONFIG_STRAGGLER, STRAGGLER_WAIT_S))

    return make_server_app(state_for, on_done=on_done, on_round=on_round, straggler_for=straggler_for)


def _client_app() -> Any:
    from federation.apps import make_client_app

    return make_client_app(_participant_for)


# The Flower components `flwr run` loads (node.flower:server_app, federation.worker:client_app); Flower checks
# for these names statically, so they are plain module attributes.
server_app = _server_app()
client_app = _client_app()


def prepare_tls(home: Path, name: str) -> Path:
    """Generate the federation's CA + SuperLink certificate (coordinator, at create time); returns ca.pem."""
    from federation.tls import make_tls

    return make_tls(federation_dir(home, name) / TLS_DIR).ca_cert


def _exit_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so `finally` stops the Flower processes this command started."""
    import signal
    import sys

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


# --- admission of members' SuperNodes --------------------------------------------------------------


def prepare_supernode_key(home: Path, identity: Identity, agreement: Agreement) -> Path:
    """Member, at join: this node's SuperNode key for `agreement` (made once) and the record, signed with
    the node's identity, that the coordinator admits; returns the record's path."""
    fed = federation_dir(home, agreement.name)
    public = ensure_supernode_key(fed / SUPERNODE_KEY_FILE)
    record = fed / SUPERNODE_RECORD_FILE
    replace_file(record, sign_supernode_key(identity, agreement.federation_id, public).to_bytes())
    return record


def admit_supernode(home: Path, name: str, data: bytes) -> SupernodeKey:
    """Coordinator: verify a member's SuperNode key record against the agreement and keep it (a newer record
    from the same member replaces the older: key rotation)."""
    agreement = agreement_for(home, name)
    key = verify_supernode_key(data, agreement)
    admitted = federation_dir(home, name) / ADMITTED_DIR
    admitted.mkdir(parents=True, exist_ok=True)
    (admitted / f"{key.member}.json").write_bytes(data)
    return key


def admitted_supernodes(home: Path, agreement: Agreement) -> list[SupernodeKey]:
    """The admitted records that still verify against `agreement` (a member dropped from a re-created
    agreement is skipped, with a warning)."""
    keys = []
    for path in sorted((federation_dir(home, agreement.name) / ADMITTED_DIR).glob("*.json")):
        try:
            keys.append(verify_supernode_key(path.read_bytes(), agreement))
        except FederationError as exc:
            log.warning("not registering %s: %s", path, exc)
    return keys


def run_coordinator(home: Path, name: str, *, port: int, host: str = "127.0.0.1", timeout_s: float = 3600.0,
                    supernode_auth: bool = True, straggler_s: float = 10.0, resume: bool = False) -> dict[str, Any]:
    """Start the TLS SuperLink on port `port`, register the admitted members' SuperNode keys, submit the
    app with `flwr run`, wait for the run to end, stop the SuperLink; returns the outcome the ServerApp
    wrote. `supernode_auth=False` lets any SuperNode that trusts the CA connect (contributions are still
    checked for members' signatures). `straggler_s`: see federation.apps.send_and_receive. resume=True
    continues after the rounds an earlier run saved (node.federated.prepare_rounds checks them first)."""
    import subprocess

    from federation.deployment import (
        flwr_run,
        pin_run,
        register_supernode,
        start_superlink,
        write_app,
        write_connection,
    )
    from federation.tls import TlsFiles

    _check_listen(host)
    agreement = agreement_for(home, name)
    fed = federation_dir(home, name)
    tls_dir = fed / TLS_DIR
    tls = TlsFiles(tls_dir / "ca.pem", tls_dir / "server.pem", tls_dir / "server.key")
    if not tls.server_key.is_file():
        raise NodeError(f"no TLS material in {tls_dir}; it is made by `rewardnode federation create`")
    admitted = admitted_supernodes(home, agreement) if supernode_auth else []
    if supernode_auth and len(admitted) < agreement.min_participants:
        raise NodeError(f"{len(admitted)} member SuperNode(s) admitted, fewer than min_participants = "
                        f"{agreement.min_participants}: each member sends the {SUPERNODE_RECORD_FILE} that "
                        f"`rewardnode federation join` wrote, and you run `rewardnode federation admit {name} FILE`")
    work = fed / "run"
    work.mkdir(parents=True, exist_ok=True)
    outcome_path = fed / "rounds" / OUTCOME_FILE
    outcome_path.unlink(missing_ok=True)
    _exit_on_sigterm()
    superlink = start_superlink(work, port, tls, host=host, supernode_auth=supernode_auth)
    try:
        write_connection(work / "flwr", f"127.0.0.1:{port}", tls.ca_cert)
        for key in admitted:
            public = work / "supernodes" / f"{key.member[:16]}.pub"
            public.parent.mkdir(parents=True, exist_ok=True)
            public.write_bytes(key.public_key_ssh)
            node_id = register_supernode(work, public, name=key.member[:16])
            log.info("registered the SuperNode of member %s... as Flower node %d", key.member[:16], node_id)
        app = write_app(work / "app", "node.flower:server_app", "federation.worker:client_app")
        run_config = {RUN_CONFIG_HOME: str(home), RUN_CONFIG_FEDERATION: name,
                      RUN_CONFIG_STRAGGLER: str(straggler_s), RUN_CONFIG_RESUME: "1" if resume else "0"}
        pin_run(work, app, run_config)  # the SuperLink's ServerApp runs this run and nothing else
        try:
            done = flwr_run(work, app, run_config, timeout_s)
        except subprocess.TimeoutExpired as exc:  # stop the SuperLink (finally) and say so in one line
            (work / "flwr-run.log").write_text(_text(exc.stdout) + _text(exc.stderr))
            finished = len(finished_rounds(home, name))
            again = "a longer --timeout" + (" and --resume" if finished else "")
            raise NodeError(f"no outcome within --timeout {timeout_s:g} s ({finished} of {agreement.rounds} "
                            f"round(s) done; see {work / 'flwr-run.log'}); stopped the SuperLink. Check "
                            f"that the members run `rewardnode federation run {name}`, then run again with "
                            f"{again}") from None
        (work / "flwr-run.log").write_text(done.stdout + done.stderr)
    finally:
        superlink.stop()
    if not outcome_path.is_file():
        raise NodeError(f"the federation run ended without an outcome (a round below quorum, or a crash); see "
                        f"{work / 'flwr-run.log'} and {work / 'superlink.log'}")
    outcome: dict[str, Any] = json.loads(outcome_path.read_text())
    return outcome


def _text(output: bytes | str | None) -> str:
    """What a timed-out subprocess wrote (TimeoutExpired keeps bytes even for a text-mode run)."""
    return output.decode("utf-8", "replace") if isinstance(output, bytes) else output or ""


def _check_listen(host: str) -> None:
    """The coordinator's own `flwr` commands reach its SuperLink on 127.0.0.1, and the SuperLink answers its
    control API to loopback clients only: bind loopback or every interface, not one outside address."""
    import ipaddress

    if host == "localhost":
        return
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise NodeError(f"--listen {host} is not an IP address; use 0.0.0.0 (every interface, for members on "
                        "other machines) or 127.0.0.1 (this machine only)") from None
    if not (address.is_loopback or address.is_unspecified):
        raise NodeError(f"--listen {host}: the coordinator drives its SuperLink over 127.0.0.1, which a "
                        f"SuperLink bound to {host} alone does not answer; use --listen 0.0.0.0 and let only "
                        "the members reach the port (firewall or VPN)")


def run_member(home: Path, name: str, *, serve: bool = False, timeout_s: float = 3600.0) -> str | None:
    """Run this member's SuperNode and its warm worker until the federated model lands in its registry
    (or until stopped: serve)."""
    import tempfile

    from federation.deployment import start_supernode, supernode_refused
    from federation.worker import NODE_CONFIG_SOCKET, Worker

    agreement = agreement_for(home, name)
    join = read_join(home, name)
    fed = federation_dir(home, name)
    ca = fed / str(join.get("ca") or CA_FILE)
    if not join.get("ca") or not ca.is_file():  # the SuperLink always uses TLS, and SuperNodes authenticate
        raise NodeError(f"no TLS CA certificate for federation {name!r} at {ca}: run `rewardnode "
                        f"federation join {name} --coordinator {join['coordinator']} --ca FILE` with the "
                        f"federation/{name}/tls/ca.pem the coordinator's `federation create` wrote")
    auth_key = fed / SUPERNODE_KEY_FILE
    if not auth_key.is_file():
        raise NodeError(f"no SuperNode key at {auth_key}; run `rewardnode federation join {name} ...` again "
                        f"and send the {SUPERNODE_RECORD_FILE} it writes to the coordinator")
    work = fed / "run"
    work.mkdir(parents=True, exist_ok=True)
    sock = work / "worker.sock"
    if len(str(sock)) > 100:  # AF_UNIX paths are limited to ~108 bytes
        sock = Path(tempfile.mkdtemp(prefix="rewardnode-")) / "worker.sock"
    _exit_on_sigterm()
    with Node.open(home) as node:
        before = {m.id for m in node.store.list_models()}
        # model, data and key stay warm in this process, which trains nothing else: batches may use every core
        worker = Worker(NodeParticipant(node, agreement, cpu_workers=0), sock)
        node_config = {RUN_CONFIG_HOME: str(home), NODE_CONFIG_SOCKET: str(sock)}
        def start() -> tuple[Any, float]:
            return start_supernode(work, str(join["coordinator"]), ca, node_config, auth_key=auth_key), time.monotonic()

        proc, started = start()
        quick_exits = 0
        try:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                if supernode_refused(proc):
                    # The SuperLink refused this SuperNode: the coordinator has not admitted (registered) its
                    # key yet, or still sees this member's previous SuperNode online (up to 2 heartbeats
                    # after a crash). Try again until the deadline.
                    log.warning("the SuperLink at %s refused this SuperNode (its key is not admitted yet, or "
                                "a previous SuperNode of this node still counts as online); retrying in %g s",
                                join["coordinator"], RETRY_S)
                    proc.stop()
                    time.sleep(RETRY_S)
                    proc, started = start()
                    continue
                if proc.popen.poll() is not None:
                    # A SuperNode that ran a while lost its SuperLink (a restarted coordinator answers its
                    # heartbeats 401): start it again, it activates anew with the same key. One that keeps
                    # dying at once cannot start at all (certificate, address): give up.
                    quick = time.monotonic() - started < QUICK_EXIT_S
                    quick_exits = quick_exits + 1 if quick else 0
                    if quick_exits >= MAX_QUICK_EXITS:
                        raise NodeError(f"the SuperNode exited ({proc.popen.returncode}) {quick_exits} times in a "
                                        f"row within {QUICK_EXIT_S:g} s of starting; see {proc.log}")
                    log.warning("the SuperNode exited (%s); starting it again in %g s (see %s)",
                                proc.popen.returncode, RETRY_S, proc.log)
                    time.sleep(RETRY_S)
                    proc, started = start()
                    continue
                if not serve:
                    new = [m for m in node.store.list_models() if m.id not in before and m.kind == MODEL_KIND
                           and m.provenance.get("federation_id") == agreement.federation_id]
                    if new:
                        _wait_finalize_sent(proc)
                        return new[-1].id
                time.sleep(0.5)
            raise NodeError(f"no federated model arrived within {timeout_s:g}s; is the coordinator running?")
        finally:
            proc.stop()
            worker.close()
            if sock.parent != work:
                sock.parent.rmdir()


def _wait_finalize_sent(proc: Any, timeout_s: float = 15.0) -> None:
    """The model lands in the registry before the SuperNode has pushed the finalize reply, and Flower 1.41's
    SuperLink answers a pull for a reply with "Node Unavailable" once the replying node has deactivated,
    even if the reply is stored. So wait until the reply is sent, then FINALIZE_GRACE_S more for the
    coordinator (which pulls every 50 ms) to collect it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.popen.poll() is None:
        out = proc.output()
        at = out.rfind("Sending: query.finalize")
        if at >= 0 and "Sent successfully" in out[at:]:
            time.sleep(FINALIZE_GRACE_S)
            return
        time.sleep(0.1)
