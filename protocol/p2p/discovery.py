"""Finding peers: bootstrap addresses from config, signed node descriptors over gossip, Kademlia DHT.

1. `bootstrap()` dials the configured bootstrap multiaddrs (`/ip4/H/tcp/P/p2p/ID`).
2. Every node publishes its signed `NodeDescriptor` on `TOPIC_NODES` once it has a gossip peer, and
   again (debounced) whenever it sees a node it did not know or one that moved to new addresses, so a
   newcomer that only knows a bootstrap node learns everyone, and everyone learns it. A descriptor is
   dialed only after the gossip validator checked its signature and that its key matches its peer ID.
   `on_peer` hears every verified descriptor: at once when the peer is new or announces other
   addresses, otherwise at most once per `report_every_s` (gossip repeats descriptors often).
3. With the DHT on, `advertise(federation_id)` stores a provider record under the federation's key
   and `find_members(federation_id)` looks providers up and dials them: members found without any
   gossip path between them.
mDNS (local-network broadcast) is a host option, off by default.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import trio

from protocol.envelope import Envelope
from protocol.p2p.gossip import TOPIC_NODES, Gossip
from protocol.p2p.host import HostError, P2PHost
from protocol.p2p.messages import Message, NodeDescriptor

log = logging.getLogger(__name__)


def federation_key(federation_id: str) -> str:
    """The DHT key (sha2-256 multihash, hex) under which members of a federation advertise."""
    digest = hashlib.sha256(f"rewardnode/federation/{federation_id}".encode()).hexdigest()
    return "1220" + digest


class Discovery:
    """Keeps a node connected to its peers and remembers the descriptors it has verified."""

    def __init__(self, host: P2PHost, gossip: Gossip, *, name: str, capabilities: Sequence[str] = (),
                 bootstrap: Sequence[str] = (), max_peers: int = 64, reannounce_s: float = 2.0,
                 on_peer: Callable[[NodeDescriptor], None] | None = None,
                 report_every_s: float = 60.0, heartbeat_s: float = 300.0) -> None:
        if report_every_s < 0:
            raise ValueError(f"report_every_s must be >= 0 (seconds between on_peer calls for one peer), "
                             f"got {report_every_s}")
        if heartbeat_s < 0:
            raise ValueError(f"heartbeat_s must be >= 0 (seconds between announcements; 0 = only on change), "
                             f"got {heartbeat_s}")
        self.heartbeat_s = heartbeat_s
        self._stopped = threading.Event()
        self.host = host
        self.gossip = gossip
        self.name = name
        self.capabilities = tuple(capabilities)
        self.bootstrap_addrs = tuple(bootstrap)
        self.max_peers = max_peers
        self.reannounce_s = reannounce_s
        self.on_peer = on_peer
        self.report_every_s = report_every_s
        self.known: dict[str, NodeDescriptor] = {}
        """Verified descriptors by peer ID (the latest one of each peer)."""
        self._reported: dict[str, float] = {}
        """When (monotonic) `on_peer` last heard of each peer ID."""
        self._lock = threading.Lock()
        self._last_announce = 0.0
        self._announce_pending = False

    def descriptor(self) -> NodeDescriptor:
        """This node's descriptor (its current addresses)."""
        addrs = tuple(a.split("/p2p/")[0] for a in self.host.addrs)
        return NodeDescriptor(self.name, self.host.identity.public_key_hex, self.host.peer_id, addrs,
                              self.capabilities)

    def start(self, *, wait_s: float = 5.0) -> list[str]:
        """Subscribe, dial bootstrap peers, announce; returns the bootstrap addresses that failed."""
        self.gossip.subscribe(TOPIC_NODES, self._on_descriptor)
        failed = self.bootstrap(self.bootstrap_addrs)
        self.announce(wait_s=wait_s)
        self.start_heartbeat()
        return failed

    def start_heartbeat(self) -> None:
        """Announce again every `heartbeat_s` until `stop`: peers refresh when they last saw this node, and
        one that missed the first announcement (no gossip mesh yet) learns of it (0: announce on change only)."""
        if self.heartbeat_s > 0:
            threading.Thread(target=self._beat, name="rewardnode-p2p-heartbeat", daemon=True).start()

    def stop(self) -> None:
        """End the heartbeat (the host is stopped by its owner)."""
        self._stopped.set()

    def _beat(self) -> None:
        while not self._stopped.wait(self.heartbeat_s):
            if not self.host.running:
                continue
            try:
                self.announce(wait_s=0.0)
            except HostError as exc:
                log.info("heartbeat announce failed: %s", exc)

    def bootstrap(self, addrs: Sequence[str]) -> list[str]:
        """Dial each address; returns those that could not be reached (logged, not raised)."""
        failed = []
        for addr in addrs:
            try:
                self.host.connect(addr)
            except HostError as exc:
                log.warning("bootstrap peer unreachable: %s", exc)
                failed.append(addr)
        return failed

    def announce(self, *, wait_s: float = 5.0) -> bool:
        """Publish our descriptor once some peer listens on the nodes topic (up to `wait_s`)."""
        deadline = time.monotonic() + wait_s
        while not self.gossip.topic_peers(TOPIC_NODES):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        self.gossip.publish(self.descriptor())
        with self._lock:
            self._last_announce = time.monotonic()
        return True

    def _on_descriptor(self, message: Message, env: Envelope) -> None:
        if not isinstance(message, NodeDescriptor) or message.peer_id == self.host.peer_id:
            return
        now = time.monotonic()
        with self._lock:
            before = self.known.get(message.peer_id)
            self.known[message.peer_id] = message
            # New, or restarted elsewhere: dial it, tell it about us, record it now.
            moved = before is None or before.addresses != message.addresses
            last = self._reported.get(message.peer_id)
            report = self.on_peer is not None and (moved or last is None or now - last >= self.report_every_s)
            if report:
                self._reported[message.peer_id] = now
            schedule = moved and not self._announce_pending
            if schedule:
                self._announce_pending = True
        if moved:
            connected = set(self.host.connected_peers())
            if message.peer_id not in connected and len(connected) < self.max_peers:
                for addr in message.addresses:
                    try:
                        self.host.connect(f"{addr}/p2p/{message.peer_id}")
                        break
                    except HostError as exc:
                        log.info("could not dial announced peer %s at %s: %s", message.name, addr, exc)
        if report and self.on_peer is not None:
            self.on_peer(message)
        if schedule:
            # Let the newcomer know about us; debounced so a burst of newcomers costs one announce.
            threading.Timer(self._debounce(), self._reannounce).start()

    def _debounce(self) -> float:
        with self._lock:
            since = time.monotonic() - self._last_announce
        return max(0.05, self.reannounce_s - since) if since < self.reannounce_s else 0.05

    def _reannounce(self) -> None:
        with self._lock:
            self._announce_pending = False
        try:
            if self.host.running:
                self.announce(wait_s=1.0)
        except HostError as exc:
            log.info("re-announce failed: %s", exc)

    # --- DHT ------------------------------------------------------------------------------------

    def advertise(self, federation_id: str, timeout: float = 15.0) -> bool:
        """Store a DHT provider record: this node takes part in `federation_id`."""
        dht = self._dht()

        async def provide() -> bool:
            await self._seed_routing_table()
            return bool(await dht.provide(federation_key(federation_id)))
        return self.host.call(provide, timeout=timeout)

    def find_members(self, federation_id: str, count: int = 20, timeout: float = 15.0) -> list[str]:
        """Peer IDs advertising `federation_id` in the DHT; each is dialed (best effort)."""
        dht = self._dht()

        async def lookup() -> list[str]:
            await self._seed_routing_table()
            found = []
            for info in await dht.find_providers(federation_key(federation_id), count):
                if info.peer_id == self.host.libp2p_host.get_id():
                    continue
                with trio.move_on_after(5):
                    try:
                        await self.host.libp2p_host.connect(info)
                    except Exception as exc:  # noqa: BLE001 - one bad record must not stop the lookup
                        log.info("could not dial provider %s: %s", info.peer_id, exc)
                found.append(str(info.peer_id.to_base58()))
            return found
        return self.host.call(lookup, timeout=timeout)

    async def _seed_routing_table(self) -> None:
        """Put every connected peer into the DHT routing table (py-libp2p does not on its own)."""
        from libp2p.peer.peerinfo import PeerInfo

        host = self.host.libp2p_host
        for pid in host.get_connected_peers():
            addrs = host.get_peerstore().addrs(pid)
            if addrs:
                try:
                    await self.host.dht.routing_table.add_peer(PeerInfo(pid, addrs))
                except Exception as exc:  # noqa: BLE001
                    log.debug("routing table refused %s: %s", pid, exc)

    def _dht(self) -> Any:
        if self.host.dht is None:
            raise HostError("the DHT is off for this host; set [p2p] dht = true to find members by DHT")
        return self.host.dht
