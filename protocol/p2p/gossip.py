"""gossipsub topics whose validator drops unsigned, forged, stale and replayed messages at the first hop.

Every gossip message is the wire form of a signed envelope (protocol.envelope) carrying one message
of protocol.p2p.messages. Before a node delivers or forwards a message, the topic validator checks:

1. the bytes are a canonical envelope under the size cap (else `malformed`, i.e. unsigned junk);
2. its type belongs on this topic (`wrong-topic`);
3. the envelope sender is the key inside the libp2p origin peer ID (`wrong-origin`): a node can
   publish only as itself, so re-publishing someone else's envelope under a new pubsub id fails;
4. `Verifier.verify`: signature (`forged`), payload hash (`forged`), age (`stale`), nonce (`replayed`),
   optional allowlist (`unknown-sender`);
5. the payload decodes as the message type and binds its sender where it must (`malformed`).

gossipsub runs validators before forwarding, so a dropped message goes no further than the first
honest node. Drop counts per reason are in `Gossip.dropped` (for logs, metrics and tests).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

from protocol.envelope import DEFAULT_MAX_ENVELOPE_BYTES, Envelope, Verifier
from protocol.errors import (
    BadSignature,
    EnvelopeError,
    PayloadTampered,
    ReplayedNonce,
    StaleEnvelope,
    UnknownSender,
)
from protocol.p2p.host import HostError, P2PHost, public_key_of_peer
from protocol.p2p.messages import (
    FederationAnnouncement,
    Message,
    ModelAnnouncement,
    NodeDescriptor,
    RoundManifest,
    open_envelope,
    seal,
)

log = logging.getLogger(__name__)

TOPIC_NODES = "rewardnode/nodes/v1"
TOPIC_FEDERATIONS = "rewardnode/federations/v1"
TOPIC_ROUNDS = "rewardnode/rounds/v1"
TOPIC_MODELS = "rewardnode/models/v1"
TOPIC_TYPES: dict[str, frozenset[str]] = {
    TOPIC_NODES: frozenset({NodeDescriptor.TYPE}),
    TOPIC_FEDERATIONS: frozenset({FederationAnnouncement.TYPE}),
    TOPIC_ROUNDS: frozenset({RoundManifest.TYPE}),
    TOPIC_MODELS: frozenset({ModelAnnouncement.TYPE}),
}
"""Which message types each topic carries; anything else is dropped."""


def topic_for(message: Message) -> str:
    """The topic a message is published on."""
    for topic, types in TOPIC_TYPES.items():
        if message.TYPE in types:
            return topic
    raise ValueError(f"no topic carries {message.TYPE!r}; add it to TOPIC_TYPES")


Callback = Callable[[Message, Envelope], None]
REANNOUNCE_DELAYS_S = (0.5, 1.5, 3.0)
"""When a subscription is announced again after `subscribe` (see Gossip._reannounce)."""


class Gossip:
    """Signed publish/subscribe over a `P2PHost`. Thread-safe; callbacks run on the host's dispatcher thread."""

    def __init__(self, host: P2PHost, verifier: Verifier | None = None, *,
                 max_bytes: int = DEFAULT_MAX_ENVELOPE_BYTES) -> None:
        self.host = host
        self.verifier = verifier or Verifier()
        self.max_bytes = max_bytes
        self.dropped: Counter[str] = Counter()
        """Messages dropped by the validator, by reason."""
        self.accepted = 0
        self._lock = threading.Lock()
        self._callbacks: dict[str, list[Callback]] = {}

    # --- validation -----------------------------------------------------------------------------

    def check(self, topic: str, origin_peer_id: bytes, data: bytes) -> Envelope:
        """Verify one gossip message; returns the envelope or raises `EnvelopeError` (see module doc)."""
        env = Envelope.from_bytes(data, max_bytes=self.max_bytes)
        if env.type not in TOPIC_TYPES.get(topic, frozenset()):
            raise _Drop("wrong-topic")
        key = public_key_of_peer(origin_peer_id)
        if key is None or key.hex() != env.sender:
            raise _Drop("wrong-origin")
        self.verifier.verify(env)
        open_envelope(env)
        return env

    def _validator(self, topic: str) -> Callable[[Any, Any], bool]:
        def validate(forwarder: Any, msg: Any) -> bool:
            try:
                self.check(topic, bytes(msg.from_id), bytes(msg.data))
            except (EnvelopeError, _Drop) as exc:
                reason = _reason(exc)
                with self._lock:
                    self.dropped[reason] += 1
                log.info("gossip %s: dropped a message forwarded by %s (%s): %s", topic, forwarder, reason, exc)
                return False
            with self._lock:
                self.accepted += 1
            return True
        return validate

    # --- API ------------------------------------------------------------------------------------

    def subscribe(self, topic: str, callback: Callback | None = None) -> None:
        """Join `topic` (with its validator) and call `callback(message, envelope)` for each peer message."""
        if topic not in TOPIC_TYPES:
            raise ValueError(f"unknown topic {topic!r}; use one of {sorted(TOPIC_TYPES)}")
        with self._lock:
            first = topic not in self._callbacks
            self._callbacks.setdefault(topic, [])
            if callback is not None:
                self._callbacks[topic].append(callback)
        if first:
            self.host.call(self.subscribe_async, topic)

    async def subscribe_async(self, topic: str) -> None:
        """`subscribe` from the trio thread (no callback registration)."""
        pubsub = self.host.pubsub
        pubsub.set_topic_validator(topic, self._validator(topic), False)
        sub = await pubsub.subscribe(topic)
        self.host.spawn(self._reader, topic, sub)
        self.host.spawn(self._reannounce, topic)

    async def _reannounce(self, topic: str) -> None:
        """Tell every peer again, a little later, that this node subscribes to `topic`.

        py-libp2p builds the hello packet (our topics) for a new peer before that peer joins the list
        a subscription is announced to: a subscription made in between reaches neither, and that peer
        would never send us the topic's messages. Announcing again after the connection settles closes
        the gap (peers treat a repeated subscription as a no-op).
        """
        import trio
        from libp2p.pubsub.pb import rpc_pb2

        pubsub = self.host.pubsub
        for delay in REANNOUNCE_DELAYS_S:
            await trio.sleep(delay)
            if topic not in pubsub.topic_ids:
                return
            packet = rpc_pb2.RPC(subscriptions=[rpc_pb2.RPC.SubOpts(subscribe=True, topicid=topic)])
            await pubsub.message_all_peers(packet.SerializeToString())

    async def _reader(self, topic: str, sub: Any) -> None:
        me = self.host.libp2p_host.get_id().to_bytes()
        while True:
            msg = await sub.get()
            if bytes(msg.from_id) == me:
                continue
            try:
                env = Envelope.from_bytes(bytes(msg.data), max_bytes=self.max_bytes)
                message = open_envelope(env)
            except EnvelopeError:  # validated already; only a bug gets here
                log.exception("gossip %s: validated message no longer parses", topic)
                continue
            with self._lock:
                callbacks = list(self._callbacks.get(topic, ()))
            for cb in callbacks:
                self.host.deliver(cb, message, env)

    def publish(self, message: Message, *, timeout: float = 10.0) -> Envelope:
        """Sign `message` with the host's identity and publish it on its topic; returns the envelope."""
        env = seal(self.host.identity, message)
        self.publish_raw(topic_for(message), env.to_bytes(), timeout=timeout)
        return env

    def publish_raw(self, topic: str, data: bytes, *, timeout: float = 10.0) -> None:
        """Publish bytes as they are (re-announcing a stored envelope; tests inject bad ones)."""
        async def pub() -> None:
            await self.host.pubsub.publish(topic, data)
        self.host.call(pub, timeout=timeout)

    def topic_peers(self, topic: str) -> list[str]:
        """Peers known to be subscribed to `topic`."""
        async def peers() -> list[str]:
            return [p.to_base58() for p in self.host.pubsub.peer_topics.get(topic, ())]
        try:
            return self.host.call(peers)
        except HostError:
            return []


class _Drop(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _reason(exc: Exception) -> str:
    if isinstance(exc, _Drop):
        return exc.reason
    if isinstance(exc, BadSignature | PayloadTampered):
        return "forged"
    if isinstance(exc, StaleEnvelope):
        return "stale"
    if isinstance(exc, ReplayedNonce):
        return "replayed"
    if isinstance(exc, UnknownSender):
        return "unknown-sender"
    return "malformed"
