"""Node-side glue for the peer-to-peer layer: [p2p] config, peers.json, and a running host per node home.

`NodeP2P(node).start()` opens the libp2p host with the node's identity, dials the bootstrap peers
(node.toml `[p2p] bootstrap` plus `peers.json`), announces the node, serves its registered model
files by hash and calls `on_federation` hooks for every verified federation announcement it hears.
Joining a federation (Flower) is the federation package's job: register a hook.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.errors import NodeError, UsageError

log = logging.getLogger(__name__)

PEERS_FILE = "peers.json"
DEFAULT_LISTEN = ("/ip4/0.0.0.0/tcp/4001",)
_HOST_PROTOCOLS = ("ip4", "ip6", "dns", "dns4", "dns6")
_PEER_FORM = "/ip4/HOST/tcp/PORT/p2p/PEER_ID"
_ADDR_FORMS = {"listen": "/ip4/0.0.0.0/tcp/4001", "announce": "/ip4/203.0.113.5/tcp/4001",
               "bootstrap": _PEER_FORM}


@dataclass(frozen=True)
class P2PConfig:
    """node.toml `[p2p]`: how this node joins the peer-to-peer network."""

    listen: tuple[str, ...] = DEFAULT_LISTEN
    """Multiaddrs to listen on; open the TCP port in the firewall (default 4001, all interfaces)."""
    announce: tuple[str, ...] = ()
    """Public addresses to advertise when behind NAT, e.g. `/ip4/203.0.113.5/tcp/4001`."""
    bootstrap: tuple[str, ...] = ()
    """Peers dialed at start, `/ip4/HOST/tcp/PORT/p2p/PEER_ID` (plus those in peers.json)."""
    capabilities: tuple[str, ...] = ("rm",)
    """What this node offers, sent in its descriptor."""
    dht: bool = True
    """Run the Kademlia DHT to find federation members."""
    mdns: bool = False
    """Announce on the local network by mDNS (off by default)."""
    max_fetch_mib: int = 2048
    """Largest artifact this node fetches, MiB."""
    max_age_s: int = 300
    """Gossip messages older than this are dropped (replay window)."""

    @classmethod
    def from_table(cls, table: Mapping[str, Any], where: str = "node.toml [p2p]") -> P2PConfig:
        """Read the [p2p] table; unknown keys and wrong types are errors that say how to fix them."""
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(table) - known)
        if unknown:
            raise NodeError(f"{where}: unknown key(s) {unknown}; known keys are {sorted(known)}")
        values: dict[str, Any] = {}
        for key, value in table.items():
            default = getattr(cls, key)
            if isinstance(default, tuple):
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise NodeError(f"{where}: {key} must be a list of strings, e.g. {list(default) or ['...']}")
                if key in _ADDR_FORMS:
                    for addr in value:
                        problem = (peer_addr_problem(addr) if key == "bootstrap"
                                   else host_addr_problem(addr, any_port=key == "listen"))
                        if problem:
                            raise NodeError(f"{where}: {key} address {addr!r} is invalid ({problem}); "
                                            f"give the form {_ADDR_FORMS[key]}")
                values[key] = tuple(value)
            elif isinstance(default, bool):
                if not isinstance(value, bool):
                    raise NodeError(f"{where}: {key} must be true or false")
                values[key] = value
            else:
                if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                    raise NodeError(f"{where}: {key} must be a positive integer")
                values[key] = value
        return cls(**values)

    @property
    def max_fetch_bytes(self) -> int:
        return self.max_fetch_mib << 20


def _parts(addr: str) -> tuple[list[tuple[str, str]], str | None]:
    """The (protocol, value) pairs of a multiaddr as py-libp2p parses it, or the parser's reason why not."""
    from multiaddr import Multiaddr  # py-libp2p's own parser; importing it starts no trio

    try:
        parsed = Multiaddr(addr)
    except Exception as exc:  # noqa: BLE001 - the library raises several types (ValueError, KeyError, ...)
        reason = str(exc).split(" (string: ")[0]
        return [], reason.split("': ", 1)[-1] or type(exc).__name__
    return [(p.name, parsed.value_for_protocol(p.code) or "") for p in parsed.protocols()], None


def peer_id_problem(peer_id: str) -> str | None:
    """Why `peer_id` is not a libp2p peer ID (base58 multihash: identity of <= 42 bytes, or sha2-256)."""
    import base58

    try:
        raw = base58.b58decode(peer_id)
    except ValueError:
        return f"peer ID {peer_id!r} is not base58"
    code, size, digest = (raw[0], raw[1], raw[2:]) if len(raw) >= 2 else (-1, -1, b"")
    if not (len(digest) == size and (code == 0x00 and size <= 42 or code == 0x12 and size == 32)):
        return f"peer ID {peer_id!r} is not a base58 multihash (a peer ID looks like 12D3KooW...)"
    return None


def host_addr_problem(addr: str, *, any_port: bool = False) -> str | None:
    """Why `addr` is not `/ip4|ip6|dns.../HOST/tcp/PORT` (port 0 only with `any_port`: listen), or None."""
    parts, problem = _parts(addr.strip())
    if problem:
        return problem
    names = [name for name, _ in parts]
    if names[:1] not in ([p] for p in _HOST_PROTOCOLS) or names[1:] != ["tcp"]:
        return "expected a host and a TCP port, nothing else"
    if any_port and names[0].startswith("dns"):
        return "listen on an IP address, not a DNS name"
    if not any_port and parts[1][1] == "0":
        return "port 0 is not dialable"
    return None


def peer_addr_problem(addr: str) -> str | None:
    """Why `addr` is not a dialable peer address `/ip4|ip6|dns.../HOST/tcp/PORT/p2p/PEER_ID`, or None."""
    text = addr.strip()
    if "/p2p/" not in text:
        return _parts(text)[1] or "it must end in /p2p/PEER_ID"
    host, peer_id = text.rsplit("/p2p/", 1)  # the ID as typed: the parser would turn a CIDv1 into base58
    return host_addr_problem(host) or peer_id_problem(peer_id) or _parts(text)[1]


def check_multiaddr(addr: str) -> str:
    """A dialable peer address `/ip4|ip6|dns/.../tcp/PORT/p2p/PEER_ID`, or UsageError."""
    problem = peer_addr_problem(addr)
    if problem:
        raise UsageError(f"{addr!r} is not a peer address ({problem}); give {_PEER_FORM} as the peer's "
                         "`rewardnode identity --json` prints it (addresses)")
    return addr.strip()


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `.<name>.lock` next to `path`: one writer at a time, across processes."""
    with open(path.with_name(f".{path.name}.lock"), "a", encoding="utf-8") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # released when the file closes
        yield


def _dialable_announced(addr: str) -> bool:
    """Whether an address a peer announced can be dialled from here (not 0.0.0.0 / ::, not port 0)."""
    return host_addr_problem(addr) is None and _parts(addr)[0][0][1] not in ("0.0.0.0", "::")


@dataclass
class PeerBook:
    """Known peers, kept in `HOME/peers.json`.

    Every change re-reads the file under a lock (`HOME/.peers.json.lock`), changes that, and replaces the
    file atomically: `rewardnode peers add` and a running `rewardnode serve` both write it, and neither
    loses the other's peers.
    """

    path: Path
    peers: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def load(cls, home: Path) -> PeerBook:
        path = home / PEERS_FILE
        return cls(path, _read_peers(path))

    def add(self, addr: str, name: str | None = None) -> bool:
        """Remember a peer address; False when it was already known."""
        addr = check_multiaddr(addr)
        entry = {"addr": addr, "peer_id": addr.rsplit("/", 1)[1], "name": name,
                 "added_ms": time.time_ns() // 1_000_000}

        def change(peers: list[dict[str, Any]]) -> bool:
            if any(p["addr"] == addr for p in peers):
                return False
            peers.append(entry)
            return True
        return self._update(change)

    def record(self, name: str, public_key: str, peer_id: str, addresses: Sequence[str]) -> None:
        """Remember a peer whose signed descriptor was verified: marks it verified and seen now.

        The peer's entries gain its key. A discovered entry whose address the peer no longer announces moves
        to the first address it announces (a peer restarted elsewhere); an entry added by hand keeps its
        address (it may be the public address of a peer behind NAT, which announces its private one), and
        the announced address is added beside it when no entry has it. A peer met only through discovery is
        added with that address. Addresses that cannot be dialled from here (0.0.0.0, port 0) are passed over.
        """
        now = time.time_ns() // 1_000_000
        announced = [f"{a}/p2p/{peer_id}" for a in addresses if _dialable_announced(a)]

        def change(peers: list[dict[str, Any]]) -> bool:
            entries = [p for p in peers if p.get("peer_id") == peer_id]
            if not entries and not announced:
                return False
            if announced and not any(e["addr"] in announced or e.get("source") == "discovered" for e in entries):
                entries.append({"addr": announced[0], "peer_id": peer_id, "name": name, "added_ms": now,
                                "source": "discovered"})
                peers.append(entries[-1])
            for entry in entries:
                if announced and entry["addr"] not in announced and entry.get("source") == "discovered":
                    entry["addr"] = announced[0]
                entry.update({"name": entry.get("name") or name, "public_key": public_key, "verified": True,
                              "last_seen_ms": now})
            for twin in [e for i, e in enumerate(entries) if e["addr"] in (d["addr"] for d in entries[:i])]:
                peers.remove(twin)  # two entries moved to the same address: keep the first
            return True
        self._update(change)

    def mark_seen(self, addrs: Sequence[str]) -> None:
        """Record that the peers at `addrs` answered just now (`peers --probe`)."""
        now = time.time_ns() // 1_000_000

        def change(peers: list[dict[str, Any]]) -> bool:
            seen = [p for p in peers if p["addr"] in addrs]
            for p in seen:
                p["last_seen_ms"] = max(now, p.get("last_seen_ms") or 0)
            return bool(seen)
        self._update(change)

    @property
    def addrs(self) -> list[str]:
        return [p["addr"] for p in self.peers]

    def save(self) -> None:
        """Write this book's peers into the file, merged by peer ID and address with what is there now:
        peers another process added since `load` are kept. Prefer add/record/mark_seen."""
        mine = [dict(p) for p in self.peers]

        def change(peers: list[dict[str, Any]]) -> bool:
            for entry in mine:
                match = next((p for p in peers if (p.get("peer_id"), p["addr"]) == (entry.get("peer_id"),
                                                                                  entry["addr"])), None)
                if match is None:
                    peers.append(entry)
                    continue
                seen = max(match.get("last_seen_ms") or 0, entry.get("last_seen_ms") or 0)
                match.update({k: v for k, v in entry.items() if v is not None})
                if seen:
                    match["last_seen_ms"] = seen
            return True
        self._update(change)

    def _update(self, change: Callable[[list[dict[str, Any]]], bool]) -> bool:
        """Apply `change` to the peers in the file, under the lock; write them back when it returns True."""
        with _locked(self.path):
            peers = _read_peers(self.path)
            changed = change(peers)
            if changed:
                self._replace_file(peers)
            self.peers = peers
        return changed

    def _replace_file(self, peers: list[dict[str, Any]]) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")  # one writer at a time: the lock
        try:
            tmp.write_text(json.dumps({"peers": peers}, indent=2) + "\n", encoding="utf-8")
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)  # no half-written .tmp left in the home
            raise


def _read_peers(path: Path) -> list[dict[str, Any]]:
    """The peers in a peers.json ([] when there is none); NodeError naming the fix when it is damaged."""
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise NodeError(f"{path}: not readable JSON ({exc}); fix it or move it away") from None
    peers = data.get("peers") if isinstance(data, dict) else None
    if not isinstance(peers, list) or not all(isinstance(p, dict) and isinstance(p.get("addr"), str)
                                              for p in peers):
        raise NodeError(f'{path}: expected {{"peers": [{{"addr": "..."}}, ...]}}; fix it or move it away')
    return peers


FederationHook = Callable[[Any, Any], None]
"""Called as hook(announcement: FederationAnnouncement, envelope: Envelope) on the dispatcher thread."""


class NodeP2P:
    """A node's running p2p layer: host, gossip, discovery, artifact server."""

    def __init__(self, home: Path, name: str, identity: Any, config: P2PConfig,
                 extra_bootstrap: Sequence[str] = ()) -> None:
        self.home, self.name, self.identity, self.config = home, name, identity, config
        self.peer_book = PeerBook.load(home)
        self.extra_bootstrap = tuple(extra_bootstrap)
        self._federation_hooks: list[FederationHook] = []
        self.host: Any = None
        self.gossip: Any = None
        self.discovery: Any = None
        self.server: Any = None

    @classmethod
    def for_node(cls, node: Any) -> NodeP2P:
        """Build from an opened `node.app.Node`."""
        return cls(node.config.home, node.config.name, node.identity, P2PConfig.from_table(node.config.table("p2p")))

    def on_federation(self, hook: FederationHook) -> None:
        """Register a hook for verified federation announcements (the federation engineer's join logic)."""
        self._federation_hooks.append(hook)

    def start(self) -> NodeP2P:
        from protocol.envelope import Verifier
        from protocol.p2p.discovery import Discovery
        from protocol.p2p.gossip import TOPIC_FEDERATIONS, TOPIC_MODELS, Gossip
        from protocol.p2p.host import HostConfig, P2PHost
        from protocol.p2p.transfer import ArtifactServer

        cfg = self.config
        self.host = P2PHost(self.identity, HostConfig(listen=cfg.listen, announce=cfg.announce,
                                                      enable_dht=cfg.dht, enable_mdns=cfg.mdns))
        self.server = ArtifactServer(self.host)
        self.host.on_start(self.server.install_hook)
        try:
            self.host.start()
        except Exception as exc:
            raise NodeError(f"could not start the p2p host: {exc}") from None
        self.gossip = Gossip(self.host, Verifier(max_age_s=cfg.max_age_s))
        self.gossip.subscribe(TOPIC_FEDERATIONS, self._on_federation)
        self.gossip.subscribe(TOPIC_MODELS)
        bootstrap = [*cfg.bootstrap, *self.peer_book.addrs, *self.extra_bootstrap]
        self.discovery = Discovery(self.host, self.gossip, name=self.name, capabilities=cfg.capabilities,
                                   bootstrap=bootstrap, on_peer=self._on_peer)
        failed = self.discovery.start(wait_s=2.0 if bootstrap else 0.0)
        for addr in failed:
            log.warning("bootstrap peer %s unreachable", addr)
        return self

    def _on_peer(self, descriptor: Any) -> None:
        try:
            self.peer_book.record(descriptor.name, descriptor.public_key, descriptor.peer_id, descriptor.addresses)
        except (OSError, NodeError) as exc:  # a read-only home or a damaged file must not stop discovery
            log.warning("could not update %s: %s", self.peer_book.path, exc)

    def _on_federation(self, message: Any, env: Any) -> None:
        for hook in self._federation_hooks:
            try:
                hook(message, env)
            except Exception:  # noqa: BLE001 - one hook must not stop the others
                log.exception("federation hook %r failed", hook)

    def stop(self) -> None:
        if self.discovery is not None:
            self.discovery.stop()
        if self.host is not None:
            self.host.stop()

    def __enter__(self) -> NodeP2P:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
