"""One py-libp2p host per node, run by trio in its own thread, driven through a small thread-safe API.

py-libp2p is trio-only; the rest of rewardnode is sync or asyncio. `P2PHost` starts a daemon thread
that runs `trio.run`, builds the host (TCP + noise + yamux, the peer ID derived from the node's
Ed25519 identity so one key names the node on the transport and signs its envelopes), gossipsub and a
Kademlia DHT, then waits for `stop()`. Other threads call in with `call(async_fn, ...)` (blocking,
with a timeout) or `await acall(...)` from asyncio; gossip callbacks run on one dispatcher thread,
never on the trio thread.

Known py-libp2p traps handled here:
- `Swarm.dial_peer` waits a 250 ms "happy eyeballs" head start after each address unless the
  per-peer connection cap is reached; `max_connections_per_peer=1` ends that wait on first success.
- gossipsub rate-limits every peer (ourselves included) to 10 messages/s/topic by default and drops
  the excess silently; `GossipConfig.max_messages_per_topic_per_second` sizes it (default 500).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import trio

from protocol.errors import ProtocolError
from protocol.identity import Identity

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_LISTEN = ("/ip4/127.0.0.1/tcp/0",)


class HostError(ProtocolError):
    """The p2p host could not start, is not running, or a call into it failed or timed out."""


@dataclass(frozen=True)
class GossipConfig:
    """gossipsub parameters, sized for federations of a few to a few hundred nodes."""

    degree: int = 6
    """Target mesh degree D (peers each message is pushed to eagerly)."""
    degree_low: int = 4
    degree_high: int = 12
    heartbeat_interval_s: int = 1
    """Mesh maintenance period (py-libp2p defaults to 120 s, which leaves late joiners out for minutes)."""
    max_messages_per_topic_per_second: float = 500.0
    """Per-peer, per-topic rate limit (py-libp2p default 10/s also throttles our own publishes)."""
    max_message_bytes: int = 1 << 20
    """Largest gossip message (one envelope); artifacts go over transfer.py instead."""
    seen_ttl_s: int = 600
    """How long message ids are remembered for de-duplication (>= the envelope max age)."""


@dataclass(frozen=True)
class HostConfig:
    """How a node's p2p host listens and behaves."""

    listen: tuple[str, ...] = DEFAULT_LISTEN
    """Multiaddrs to listen on, e.g. `/ip4/0.0.0.0/tcp/4001` (open that TCP port in the firewall)."""
    announce: tuple[str, ...] = ()
    """Addresses to advertise instead of the listen addresses (NAT / public IP); empty: listen ones."""
    enable_dht: bool = True
    """Run a Kademlia DHT (server mode) for finding federation members by provider records."""
    enable_mdns: bool = False
    """Find peers on the local network by mDNS (off: it broadcasts the node's presence)."""
    start_timeout_s: float = 20.0
    dial_timeout_s: float = 10.0
    gossip: GossipConfig = field(default_factory=GossipConfig)


class P2PHost:
    """A running libp2p host for one identity. Thread-safe; use as a context manager or start()/stop()."""

    def __init__(self, identity: Identity, config: HostConfig | None = None) -> None:
        self.identity = identity
        self.config = config or HostConfig()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._stopping = False
        self._nursery: trio.Nursery | None = None
        self._callbacks: queue.Queue[tuple[Callable[..., None], tuple[Any, ...]] | None] = queue.Queue()
        self._dispatcher: threading.Thread | None = None
        self._startup_hooks: list[Callable[[P2PHost], Awaitable[None]]] = []
        self.libp2p_host: Any = None
        """The py-libp2p `IHost` (touch only from the trio thread, i.e. inside `call`)."""
        self.pubsub: Any = None
        self.gossipsub: Any = None
        self.dht: Any = None
        self.peer_id = peer_id_of(identity)
        """This node's libp2p peer ID (base58), derived from its Ed25519 key."""

    # --- lifecycle ------------------------------------------------------------------------------

    def on_start(self, hook: Callable[[P2PHost], Awaitable[None]]) -> None:
        """Run `hook(self)` in the trio thread once the host listens (before `start` returns)."""
        if self._thread is not None:
            raise HostError("on_start hooks must be added before start(); add it earlier")
        self._startup_hooks.append(hook)

    def start(self) -> P2PHost:
        """Start the trio thread and wait until the host listens; raises `HostError` if it cannot."""
        if self._thread is not None:
            raise HostError("this host was already started; create a new P2PHost to restart")
        self._dispatcher = threading.Thread(target=self._dispatch, name=f"p2p-cb-{self.peer_id[-6:]}", daemon=True)
        self._dispatcher.start()
        self._thread = threading.Thread(target=self._thread_main, name=f"p2p-{self.peer_id[-6:]}", daemon=True)
        self._thread.start()
        if not self._ready.wait(self.config.start_timeout_s):
            self.stop()
            raise HostError(f"p2p host did not start within {self.config.start_timeout_s:g}s; check the listen "
                            f"addresses {list(self.config.listen)} (port in use? address not local?)")
        if self._error is not None:
            err = self._error
            self.stop()
            raise HostError(f"p2p host failed to start: {err!r}; check [p2p] listen in node.toml") from err
        if self.config.listen and not self.addrs:  # py-libp2p logs a failed bind and goes on listening nowhere
            self.stop()
            raise HostError(f"p2p host could not listen on {', '.join(self.config.listen)} (port in use or "
                            "address not local)")
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Close the host and join its threads (idempotent)."""
        token, stop = self._token, self._stop
        self._stopping = True
        _quiet_shutdown_race()
        if token is not None and stop is not None and self._thread is not None and self._thread.is_alive():
            try:
                trio.from_thread.run_sync(stop.set, trio_token=token)
            except trio.RunFinishedError:
                pass
        if self._thread is not None:
            self._thread.join(timeout)
        if self._dispatcher is not None and self._dispatcher.is_alive():
            self._callbacks.put(None)
            self._dispatcher.join(timeout)

    @property
    def running(self) -> bool:
        return self._ready.is_set() and self._error is None and self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> P2PHost:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- calling in -----------------------------------------------------------------------------

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any, timeout: float = 30.0) -> T:
        """Run `await fn(*args)` in the host's trio thread and return its result (from any other thread)."""
        if not self.running or self._token is None:
            raise HostError("the p2p host is not running; start() it first")

        async def bounded() -> T:
            with trio.fail_after(timeout):
                return await fn(*args)

        try:
            return trio.from_thread.run(bounded, trio_token=self._token)
        except trio.TooSlowError:
            raise HostError(f"p2p call {getattr(fn, '__name__', fn)} timed out after {timeout:g}s") from None
        except trio.RunFinishedError:
            raise HostError("the p2p host stopped during the call") from None

    async def acall(self, fn: Callable[..., Awaitable[T]], *args: Any, timeout: float = 30.0) -> T:
        """`call` for asyncio code: runs in a worker thread so the event loop keeps going."""
        return await asyncio.to_thread(self.call, fn, *args, timeout=timeout)

    def spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Start `fn(*args)` as a background task in the host's nursery (from the trio thread)."""
        if self._nursery is None:
            raise HostError("the p2p host is not running")
        self._nursery.start_soon(fn, *args)

    def deliver(self, callback: Callable[..., None], *args: Any) -> None:
        """Queue `callback(*args)` for the dispatcher thread (safe from the trio thread)."""
        self._callbacks.put((callback, args))

    # --- queries --------------------------------------------------------------------------------

    @property
    def addrs(self) -> list[str]:
        """Full multiaddrs of this host, each ending in `/p2p/<peer id>` (what peers dial)."""
        if not self.running:
            return []
        return [str(a) for a in self.libp2p_host.get_addrs()]

    def connected_peers(self) -> list[str]:
        """Peer IDs this host has a live connection to."""
        async def peers() -> list[str]:
            return [p.to_base58() for p in self.libp2p_host.get_connected_peers()]
        return self.call(peers)

    def connect(self, multiaddr: str, timeout: float | None = None) -> str:
        """Dial a `/ip4/.../tcp/.../p2p/<id>` address; returns the peer ID. Raises `HostError` on failure."""
        return self.call(self.connect_async, multiaddr, timeout=timeout or self.config.dial_timeout_s)

    async def connect_async(self, multiaddr: str) -> str:
        """`connect` from inside the trio thread."""
        from libp2p.peer.peerinfo import info_from_p2p_addr
        from multiaddr import Multiaddr

        try:
            info = info_from_p2p_addr(Multiaddr(multiaddr))
        except Exception as exc:
            raise HostError(f"{multiaddr!r} is not a dialable multiaddr ({exc}); use "
                            "/ip4/HOST/tcp/PORT/p2p/PEER_ID as `rewardnode identity --json` prints it") from None
        try:
            await self.libp2p_host.connect(info)
        except Exception as exc:
            raise HostError(f"could not connect to {multiaddr}: {exc}; is the peer up and the port open?") from None
        return str(info.peer_id.to_base58())

    # --- the trio side --------------------------------------------------------------------------

    def _thread_main(self) -> None:
        try:
            trio.run(self._amain)
        except BaseException as exc:  # noqa: BLE001 - reported to start() / logged
            if not self._ready.is_set():
                self._error = exc
            elif self._stopping and _is_shutdown_race(exc):
                log.debug("p2p host %s: a message arrived while it closed (%s)", self.peer_id, SHUTDOWN_RACE)
            else:
                log.exception("p2p host %s crashed", self.peer_id)
        finally:
            self._ready.set()

    async def _amain(self) -> None:
        from libp2p import new_host
        from libp2p.crypto.x25519 import create_new_key_pair as x25519_pair
        from libp2p.network.config import ConnectionConfig
        from libp2p.pubsub.gossipsub import PROTOCOL_ID, PROTOCOL_ID_V11, GossipSub
        from libp2p.pubsub.pubsub import Pubsub
        from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_ID
        from libp2p.security.noise.transport import Transport as NoiseTransport
        from libp2p.tools.anyio_service import background_trio_service
        from multiaddr import Multiaddr

        key_pair = libp2p_key_pair(self.identity)
        listen = [Multiaddr(a) for a in self.config.listen]
        g = self.config.gossip
        host = new_host(
            key_pair=key_pair,
            listen_addrs=listen,
            sec_opt={NOISE_ID: NoiseTransport(key_pair, noise_privkey=x25519_pair().private_key)},
            muxer_preference="YAMUX",
            enable_mDNS=self.config.enable_mdns,
            connection_config=ConnectionConfig(max_connections_per_peer=1),
            announce_addrs=[Multiaddr(a) for a in self.config.announce] or None,
        )
        gossipsub = GossipSub(
            protocols=[PROTOCOL_ID_V11, PROTOCOL_ID], degree=g.degree, degree_low=g.degree_low,
            degree_high=g.degree_high, heartbeat_interval=g.heartbeat_interval_s,
            max_messages_per_topic_per_second=g.max_messages_per_topic_per_second,
        )
        pubsub = Pubsub(host, gossipsub, seen_ttl=g.seen_ttl_s, max_inbound_rpc_size=g.max_message_bytes + 4096)
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        self.libp2p_host, self.pubsub, self.gossipsub = host, pubsub, gossipsub
        async with host.run(listen_addrs=listen):
            try:
                async with background_trio_service(pubsub), background_trio_service(gossipsub):
                    await pubsub.wait_until_ready()
                    async with trio.open_nursery() as nursery:
                        self._nursery = nursery
                        if self.config.enable_dht:
                            from libp2p.kad_dht.kad_dht import DHTMode, KadDHT

                            self.dht = KadDHT(host, DHTMode.SERVER)
                            nursery.start_soon(_run_service, self.dht)
                        for hook in self._startup_hooks:
                            await hook(self)
                        self._ready.set()
                        await self._stop.wait()
                        nursery.cancel_scope.cancel()
            finally:
                await _close_host(host)
        self._nursery = None

    def _dispatch(self) -> None:
        while True:
            item = self._callbacks.get()
            if item is None:
                return
            callback, args = item
            try:
                callback(*args)
            except Exception:  # noqa: BLE001 - a bad callback must not kill delivery
                log.exception("p2p callback %r failed", callback)


SHUTDOWN_RACE = "Nursery is closed to new arrivals"
"""What py-libp2p's pubsub raises when a message arrives while the host closes: harmless, nothing is lost
that a running host would have kept."""


def _is_shutdown_race(exc: BaseException) -> bool:
    """True when exc (an exception group or not) holds only SHUTDOWN_RACE errors."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_is_shutdown_race(e) for e in exc.exceptions)
    return isinstance(exc, RuntimeError) and SHUTDOWN_RACE in str(exc)


class _DropShutdownRace(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return exc is None or not _is_shutdown_race(exc)


_SHUTDOWN_FILTER = _DropShutdownRace()


def _quiet_shutdown_race() -> None:
    """Keep py-libp2p's service loggers from printing SHUTDOWN_RACE tracebacks (they log each failed task
    themselves, one logger per service class, so the filter goes on every libp2p logger that exists)."""
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if name.startswith("libp2p") and isinstance(logger, logging.Logger) and _SHUTDOWN_FILTER not in logger.filters:
            logger.addFilter(_SHUTDOWN_FILTER)


CLOSE_TIMEOUT_S = 5.0
"""How long stop() lets the host close its connections and listeners."""


async def _close_host(host: Any) -> None:
    """Close the host's connections, listeners and transports, shielded from the cancellation under way.

    Leaving `host.run()` only stops the swarm's service: py-libp2p (0.8.1) then closes the connections in
    `Swarm.run`'s `finally`, inside the scope being cancelled, so the first await of `SwarmConn.close`
    raises `Cancelled` and the sockets stay open. Peers keep the dead connection (one per peer, by
    `max_connections_per_peer=1`), so a node restarted with the same identity is not gossiped with.
    Here they are closed before the service stops: all at once (each close waits 0.1 s), then
    `host.close()` (`Swarm.close`: listeners, transports, anything left; idempotent).
    """
    with trio.move_on_after(CLOSE_TIMEOUT_S) as scope:
        scope.shield = True
        async with trio.open_nursery() as nursery:
            for conn in host.get_network().get_connections():
                nursery.start_soon(_close_quietly, conn.close, "a connection")
        await _close_quietly(host.close, "the host")
    if scope.cancelled_caught:
        log.warning("p2p host: closing its connections took over %gs; some may stay open", CLOSE_TIMEOUT_S)


async def _close_quietly(close: Callable[[], Awaitable[None]], what: str) -> None:
    try:
        await close()
    except Exception:  # noqa: BLE001 - one that fails to close must not keep the others open
        log.warning("p2p host: closing %s failed", what, exc_info=True)


async def _run_service(service: Any) -> None:
    from libp2p.tools.anyio_service import background_trio_service

    async with background_trio_service(service):
        await trio.sleep_forever()


def libp2p_key_pair(identity: Identity) -> Any:
    """The py-libp2p Ed25519 `KeyPair` of `identity` (same secret, so the same public key)."""
    from libp2p.crypto.ed25519 import Ed25519PrivateKey
    from libp2p.crypto.keys import KeyPair

    private = Ed25519PrivateKey.from_bytes(identity.private_seed())
    return KeyPair(private, private.get_public_key())


def peer_id_of(identity: Identity) -> str:
    """The libp2p peer ID (base58) that `identity` has on the network."""
    return peer_id_for_public_key(identity.public_key_bytes)


def peer_id_for_public_key(raw: bytes) -> str:
    """The libp2p peer ID (base58) of a raw 32-byte Ed25519 public key."""
    from libp2p.crypto.ed25519 import Ed25519PublicKey
    from libp2p.peer.id import ID

    return str(ID.from_pubkey(Ed25519PublicKey.from_bytes(raw)).to_base58())


def public_key_of_peer(peer_id_bytes: bytes) -> bytes | None:
    """The raw Ed25519 public key inlined in a peer ID (None for non-Ed25519 / hashed IDs)."""
    from libp2p.crypto.ed25519 import Ed25519PublicKey
    from libp2p.peer.id import ID

    try:
        key = ID(peer_id_bytes).extract_public_key()
    except Exception:  # noqa: BLE001 - any malformed id is "no key"
        return None
    if not isinstance(key, Ed25519PublicKey):
        return None
    return bytes(key.to_bytes())


def full_addrs(addrs: Sequence[str], peer_id: str) -> list[str]:
    """Append `/p2p/<peer_id>` to listen addresses that lack it."""
    return [a if "/p2p/" in a else f"{a}/p2p/{peer_id}" for a in addrs]
