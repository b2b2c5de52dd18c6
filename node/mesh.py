"""Joining a federation learned only through libp2p gossip.

The coordinator (`announce_federation`) offers its signed agreement (and the SuperLink's TLS CA) as
artifacts on the fetch protocol, announces them on `rewardnode/models/v1`, then publishes a
`FederationAnnouncement` on `rewardnode/federations/v1` naming the agreement's `federation_id`.

A member (`MeshMember`, a `NodeP2P.on_federation` hook) checks each verified announcement:

1. the coordinator is one this node trusts (its bootstrap peers, say), when a trust list is given;
2. this node is on the announcement's allowlist (when it has one);
3. it fetches the coordinator's announced agreement artifacts (chunk- and file-hash checked) until one
   verifies as signed by that coordinator (`federation.agreement.verify_agreement`) and its
   `federation_id` is the announced one; the agreement must list this node and name a base model
   whose weights hash as agreed on this machine;
4. it joins: writes `federation/<name>/agreement.json`, `join.json` (SuperLink address from the
   announcement), `ca.pem` and its SuperNode key + signed key record, exactly what `rewardnode
   federation join` writes;
   it offers the key record over gossip (the coordinator's `MeshAdmission` admits it, as
   `rewardnode federation admit` would);
5. it takes part: with `participate="supernode"` it starts `rewardnode federation run NAME` (the member's SuperNode, deployment engine); with
   `participate="local"` (default) the coordinator's in-process engine (`node.federated.run_local`)
   trains on this home.

Refusals are logged and kept in `MeshMember.refused` (federation_id -> reason); nothing raises into
the p2p dispatcher thread.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from federation.agreement import Agreement, verify_agreement
from federation.errors import FederationError
from node.errors import NodeError
from node.federated import AGREEMENT_FILE, agreement_for, base_model_sha256, federation_dir, write_join
from node.flower import admit_supernode, prepare_supernode_key
from node.p2p import NodeP2P

log = logging.getLogger(__name__)

AGREEMENT_KIND = "federation-agreement"
CA_KIND = "federation-ca"
SUPERNODE_KEY_KIND = "federation-supernode-key"
MAX_AGREEMENT_BYTES = 1 << 20
INCOMING_DIR = ".incoming"
PARTICIPATE = ("local", "supernode")


@dataclass(frozen=True)
class Joined:
    """A federation this node joined after hearing of it over gossip."""

    name: str
    federation_id: str
    coordinator: str
    """Coordinator public key (hex)."""
    superlink: str
    """SuperLink address from the announcement, host:port."""
    agreement_path: Path


def announce_federation(p2p: NodeP2P, name: str, superlink: str) -> Any:
    """Coordinator: offer agreement.json (+ tls/ca.pem) over the fetch protocol and gossip the federation.

    Call again to re-announce (gossip does not replay to late subscribers). Returns the announcement.
    """
    from protocol.p2p.messages import FederationAnnouncement, MembershipRules, Schedule
    from protocol.p2p.transfer import manifest_for

    fed = federation_dir(p2p.home, name)
    agreement = verify_agreement((fed / AGREEMENT_FILE).read_bytes(),
                                 expected_coordinator=p2p.identity.public_key_hex)
    offers = [(fed / AGREEMENT_FILE, AGREEMENT_KIND, "envelope"), (fed / "tls" / "ca.pem", CA_KIND, "pem")]
    for path, kind, fmt in offers:
        if path.is_file():
            p2p.gossip.publish(p2p.server.add(path, manifest_for(path, kind=kind, format=fmt)))
    ann = FederationAnnouncement(
        agreement.federation_id, agreement.coordinator, superlink,
        MembershipRules(allowlist=agreement.members, min_members=agreement.min_participants,
                        max_members=len(agreement.members)),
        Schedule(start_ms=time.time_ns() // 1_000_000, rounds=agreement.rounds,
                 round_timeout_s=max(1, int(agreement.round_timeout_s))))
    p2p.gossip.publish(ann)
    return ann


class MeshAdmission:
    """Coordinator: admits the SuperNodes of members that announce their signed key records over gossip
    (what `rewardnode federation admit` does with a file); install before `announce_federation`."""

    def __init__(self, p2p: NodeP2P, name: str, *, fetch_timeout_s: float = 30.0) -> None:
        self.p2p = p2p
        self.name = name
        self.agreement = agreement_for(p2p.home, name)
        self.fetch_timeout_s = fetch_timeout_s
        self.admitted: set[str] = set()
        """Member keys (hex) whose SuperNode this coordinator admitted."""
        self.refused: dict[str, str] = {}
        """Record sha256 -> why it was not admitted."""
        self._changed = threading.Condition()

    def install(self) -> MeshAdmission:
        from protocol.p2p.gossip import TOPIC_MODELS

        if self.p2p.gossip is None:
            raise NodeError("start the NodeP2P before installing the admission hook")
        self.p2p.gossip.subscribe(TOPIC_MODELS, self._on_model)
        return self

    def wait_admitted(self, n: int, timeout: float) -> set[str]:
        """Block until `n` members are admitted; raises NodeError on timeout."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self.admitted) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise NodeError(f"{len(self.admitted)} of {n} members' SuperNodes admitted after {timeout:g}s "
                                    f"(refused: {sorted(self.refused.values())}); have the members joined?")
                self._changed.wait(min(left, 0.5))
            return set(self.admitted)

    def _on_model(self, message: Any, env: Any) -> None:
        from protocol.p2p.messages import ModelAnnouncement

        if (isinstance(message, ModelAnnouncement) and message.manifest.kind == SUPERNODE_KEY_KIND
                and env.sender in self.agreement.members and env.sender not in self.admitted):
            threading.Thread(target=self._admit, args=(env.sender, message), daemon=True,
                             name=f"admit-{env.sender[:8]}").start()

    def _admit(self, sender: str, art: Any) -> None:
        from protocol.p2p.host import peer_id_for_public_key
        from protocol.p2p.transfer import TransferError, fetch

        dest = self.p2p.home / "federation" / INCOMING_DIR / f"{art.sha256}.supernode.json"
        try:
            fetch(self.p2p.host, art, [peer_id_for_public_key(bytes.fromhex(sender))], dest,
                  max_bytes=MAX_AGREEMENT_BYTES, timeout=self.fetch_timeout_s)
            key = admit_supernode(self.p2p.home, self.name, dest.read_bytes())  # signed by a member, or refused
        except (TransferError, FederationError, NodeError, OSError) as exc:
            log.warning("%s: not admitting a SuperNode record from %s...: %s", self.p2p.home, sender[:16], exc)
            with self._changed:
                self.refused[art.sha256] = str(exc)
                self._changed.notify_all()
            return
        with self._changed:
            self.admitted.add(key.member)
            self._changed.notify_all()


class MeshMember:
    """The member side: an `on_federation` hook that verifies, joins and (optionally) takes part."""

    def __init__(self, p2p: NodeP2P, *, trusted_coordinators: Iterable[str] | None = None,
                 participate: str = "local", fetch_timeout_s: float = 30.0, run_timeout_s: float = 3600.0,
                 on_joined: Callable[[Joined], None] | None = None) -> None:
        if participate not in PARTICIPATE:
            raise ValueError(f"participate={participate!r}; use one of {PARTICIPATE}")
        self.p2p = p2p
        self.home = p2p.home
        self.trusted = frozenset(trusted_coordinators) if trusted_coordinators is not None else None
        """Coordinator keys (hex) this node follows; None: any coordinator whose agreement lists it."""
        self.participate = participate
        self.fetch_timeout_s = fetch_timeout_s
        self.run_timeout_s = run_timeout_s
        self.on_joined = on_joined
        self.joined: dict[str, Joined] = {}
        """federation_id -> Joined."""
        self.refused: dict[str, str] = {}
        """federation_id -> why this node did not join."""
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        """federation name -> the member's `rewardnode federation run` process (participate="supernode")."""
        self._artifacts: dict[str, tuple[str, Any]] = {}  # sha256 -> (sender key, ModelAnnouncement)
        self._busy: set[str] = set()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)

    def install(self) -> MeshMember:
        """Register the hooks on a started NodeP2P."""
        from protocol.p2p.gossip import TOPIC_MODELS

        if self.p2p.gossip is None:
            raise NodeError("start the NodeP2P before installing the mesh hook")
        self.p2p.gossip.subscribe(TOPIC_MODELS, self._on_model)
        self.p2p.on_federation(self._on_federation)
        return self

    # --- waiting (tests, the demo) --------------------------------------------------------------------

    def wait_joined(self, federation_id: str, timeout: float) -> Joined:
        """Block until this node joined `federation_id`; raises NodeError on refusal or timeout."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while federation_id not in self.joined:
                if federation_id in self.refused and federation_id not in self._busy:
                    raise NodeError(f"{self.home}: refused federation {federation_id[:16]}...: "
                                    f"{self.refused[federation_id]}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise NodeError(f"{self.home}: did not hear of federation {federation_id[:16]}... within "
                                    f"{timeout:g}s; check the bootstrap peers and that the coordinator announced it")
                self._changed.wait(min(left, 0.5))
            return self.joined[federation_id]

    def stop(self) -> None:
        """Stop the member processes this hook started."""
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()

    # --- hooks (p2p dispatcher thread: never block here) ---------------------------------------------

    def _on_model(self, message: Any, env: Any) -> None:
        from protocol.p2p.messages import ModelAnnouncement

        if isinstance(message, ModelAnnouncement) and message.manifest.kind in (AGREEMENT_KIND, CA_KIND):
            with self._changed:
                self._artifacts[message.sha256] = (env.sender, message)
                self._changed.notify_all()

    def _on_federation(self, message: Any, env: Any) -> None:
        fid = message.federation_id
        with self._lock:
            if fid in self.joined or fid in self._busy:
                return
            self._busy.add(fid)
            self.refused.pop(fid, None)
        threading.Thread(target=self._handle, args=(message,), name=f"mesh-{fid[:8]}", daemon=True).start()

    # --- verify, join, take part ---------------------------------------------------------------------

    def _handle(self, ann: Any) -> None:
        fid = ann.federation_id
        try:
            joined = self._join(ann)
        except (FederationError, NodeError, OSError, ValueError) as exc:
            reason = str(exc)
            log.warning("%s: not joining federation %s...: %s", self.home, fid[:16], reason)
            with self._changed:
                self.refused[fid] = reason
                self._busy.discard(fid)
                self._changed.notify_all()
            return
        with self._changed:
            self.joined[fid] = joined
            self._busy.discard(fid)
            self._changed.notify_all()
        log.info("%s: joined federation %r (%s...) via gossip", self.home, joined.name, fid[:16])
        if self.participate == "supernode":
            self._start_member(joined)
        if self.on_joined is not None:
            self.on_joined(joined)

    def _join(self, ann: Any) -> Joined:
        me = self.p2p.identity.public_key_hex
        if self.trusted is not None and ann.coordinator not in self.trusted:
            raise FederationError(f"coordinator {ann.coordinator[:16]}... is not one this node trusts")
        if ann.membership.allowlist and me not in ann.membership.allowlist:
            raise FederationError("this node is not on the announcement's allowlist")
        agreement, raw = self._fetch_agreement(ann)
        if me not in agreement.members:
            raise FederationError(f"the agreement of {agreement.name!r} does not list this node's key; ask the "
                                  "coordinator to add it (rewardnode identity --json)")
        if agreement.rounds != ann.schedule.rounds:
            raise FederationError(f"the announcement plans {ann.schedule.rounds} round(s), the signed agreement "
                                  f"{agreement.rounds}; the announcement is inconsistent")
        mine = base_model_sha256(agreement.base_model)
        if mine != agreement.base_model_sha256:
            raise FederationError(f"this node's {agreement.base_model!r} hashes to {mine[:16]}..., the agreement "
                                  f"says {agreement.base_model_sha256[:16]}...; install the agreed backbone")
        fed = federation_dir(self.home, agreement.name)
        target = fed / AGREEMENT_FILE
        if target.exists() and verify_agreement(target.read_bytes()).federation_id != agreement.federation_id:
            raise FederationError(f"{target} holds another federation of the same name; move it away to join")
        fed.mkdir(parents=True, exist_ok=True)
        target.write_bytes(raw)
        join: dict[str, Any] = {"coordinator": ann.superlink, "federation_id": agreement.federation_id,
                                "learned_via": "gossip"}
        ca = self._fetch_ca(ann.coordinator, fed / "ca.pem")
        if ca is not None:
            join["ca"] = ca.name
        write_join(self.home, agreement.name, join)
        # The coordinator admits this node's SuperNode from this record (MeshAdmission); it holds only a
        # public key and a signature, and the announcement's allowlist already names the members.
        from protocol.p2p.transfer import manifest_for

        record = prepare_supernode_key(self.home, self.p2p.identity, agreement)
        self.p2p.gossip.publish(self.p2p.server.add(record, manifest_for(record, kind=SUPERNODE_KEY_KIND,
                                                                          format="envelope")))
        return Joined(agreement.name, agreement.federation_id, agreement.coordinator, ann.superlink, target)

    def _candidates(self, coordinator: str, kind: str, tried: set[str]) -> list[Any]:
        return [a for sender, a in self._artifacts.values()
                if sender == coordinator and a.manifest.kind == kind and a.sha256 not in tried]

    def _fetch_agreement(self, ann: Any) -> tuple[Agreement, bytes]:
        """Fetch the coordinator's announced agreements until one is the announced federation."""
        from protocol.p2p.host import peer_id_for_public_key
        from protocol.p2p.transfer import TransferError, fetch

        provider = peer_id_for_public_key(bytes.fromhex(ann.coordinator))
        incoming = self.home / "federation" / INCOMING_DIR
        tried: set[str] = set()
        errors: list[str] = []
        deadline = time.monotonic() + self.fetch_timeout_s
        while time.monotonic() < deadline:
            with self._changed:
                todo = self._candidates(ann.coordinator, AGREEMENT_KIND, tried)
                if not todo:
                    self._changed.wait(min(0.5, max(deadline - time.monotonic(), 0.01)))
                    continue
            for art in todo:
                tried.add(art.sha256)
                dest = incoming / f"{art.sha256}.json"
                try:
                    if not dest.is_file():
                        fetch(self.p2p.host, art, [provider], dest, max_bytes=MAX_AGREEMENT_BYTES,
                              timeout=self.fetch_timeout_s)
                    raw = dest.read_bytes()
                    agreement = verify_agreement(raw, expected_coordinator=ann.coordinator)
                except (TransferError, FederationError, OSError) as exc:
                    errors.append(str(exc))
                    continue
                if agreement.federation_id == ann.federation_id:
                    return agreement, raw
        detail = f" ({'; '.join(errors[-2:])})" if errors else ""
        raise FederationError(f"no agreement for federation {ann.federation_id[:16]}... signed by its coordinator "
                              f"arrived within {self.fetch_timeout_s:g}s{detail}; ask it to re-announce")

    def _fetch_ca(self, coordinator: str, dest: Path) -> Path | None:
        """The newest CA certificate the coordinator announced (signed by it), or None."""
        from protocol.p2p.host import peer_id_for_public_key
        from protocol.p2p.transfer import fetch

        with self._lock:
            cas = self._candidates(coordinator, CA_KIND, set())
        if not cas:
            return None
        fetch(self.p2p.host, cas[-1], [peer_id_for_public_key(bytes.fromhex(coordinator))], dest,
              max_bytes=MAX_AGREEMENT_BYTES, timeout=self.fetch_timeout_s)
        return dest

    def _start_member(self, joined: Joined) -> None:
        """Deployment engine: this member's SuperNode + warm worker, until the federated model lands."""
        fed = federation_dir(self.home, joined.name)
        run = fed / "run"
        run.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
        with (run / "member.log").open("wb") as out:
            self.processes[joined.name] = subprocess.Popen(
                [sys.executable, "-m", "node.cli", "--home", str(self.home), "federation", "run", joined.name,
                 "--timeout", str(self.run_timeout_s)], env=env, stdout=out, stderr=subprocess.STDOUT)
