"""Gossip over 3-5 real hosts: delivery to all; forged, replayed, stale, unsigned messages dropped at the first hop."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from protocol.envelope import Envelope, Verifier
from protocol.identity import Identity
from protocol.p2p.gossip import TOPIC_MODELS, Gossip
from protocol.p2p.host import P2PHost
from protocol.p2p.messages import ArtifactManifest, Message, ModelAnnouncement, NodeDescriptor, seal
from tests.protocol.p2p.conftest import HostFactory, gossip_ready, wait_for

pytestmark = pytest.mark.timeout(180)


def _announcement(tag: int) -> ModelAnnouncement:
    import hashlib

    h = hashlib.sha256(str(tag).encode()).hexdigest()
    return ModelAnnouncement(h, 10, ArtifactManifest(1024, (h,)))


class Inbox:
    def __init__(self) -> None:
        self.items: list[tuple[Message, Envelope]] = []
        self.lock = threading.Lock()

    def __call__(self, message: Message, env: Envelope) -> None:
        with self.lock:
            self.items.append((message, env))

    def __len__(self) -> int:
        with self.lock:
            return len(self.items)


def _line(make_host: HostFactory, n: int) -> tuple[list[P2PHost], list[Gossip], list[Inbox]]:
    """n hosts connected in a line 0-1-2-...: messages must be forwarded to reach the far end."""
    hosts = [make_host() for _ in range(n)]
    for a, b in zip(hosts, hosts[1:], strict=False):
        b.connect(a.addrs[0])
    gossips = [Gossip(h) for h in hosts]
    inboxes = [Inbox() for _ in hosts]
    for g, box in zip(gossips, inboxes, strict=True):
        g.subscribe(TOPIC_MODELS, box)
    gossip_ready(gossips, TOPIC_MODELS)
    return hosts, gossips, inboxes


def test_gossip_reaches_every_node_across_hops(make_host: HostFactory) -> None:
    hosts, gossips, inboxes = _line(make_host, 4)
    time.sleep(1.2)  # one heartbeat: meshes formed along the line
    ann = _announcement(1)
    env = gossips[0].publish(ann)
    for box in inboxes[1:]:
        wait_for(lambda box=box: len(box) == 1, 10, "delivery")
    for box in inboxes[1:]:
        message, got = box.items[0]
        assert message == ann
        assert got.sender == hosts[0].identity.public_key_hex and got.nonce == env.nonce
    assert len(inboxes[0]) == 0  # own messages are not echoed back
    assert sum(sum(g.dropped.values()) for g in gossips) == 0


def test_burst_over_py_libp2p_default_rate_limit_is_delivered(make_host: HostFactory) -> None:
    """50 messages in well under a second: the default 10 msg/s/peer limit would drop 40."""
    hosts, gossips, inboxes = _line(make_host, 3)
    time.sleep(1.2)
    for i in range(50):
        gossips[0].publish(_announcement(100 + i))
    wait_for(lambda: len(inboxes[2]) == 50, 15, "50 messages at the far end")
    assert len(inboxes[1]) == 50


def _attacker_publish(host: P2PHost, topic: str, data: bytes) -> None:
    """Publish raw bytes from a host with no validator (a malicious node skips its own checks)."""
    async def pub() -> None:
        await host.pubsub.publish(topic, data)
    host.call(pub)


@pytest.mark.e2e
def test_bad_messages_are_dropped_at_the_first_hop(make_host: HostFactory) -> None:
    # attacker M -- B -- C: M skips validation; B must drop each bad message so C never sees it.
    m, b, c = make_host(), make_host(), make_host()
    b.connect(m.addrs[0])
    c.connect(b.addrs[0])
    gb, gc = Gossip(b), Gossip(c)
    box_b, box_c = Inbox(), Inbox()
    gb.subscribe(TOPIC_MODELS, box_b)
    gc.subscribe(TOPIC_MODELS, box_c)
    gm = Gossip(m)  # used only to read peers; M never registers a validator
    wait_for(lambda: gm.topic_peers(TOPIC_MODELS), 10, "B's subscription seen by M")
    gossip_ready([gb, gc], TOPIC_MODELS, 1)
    time.sleep(1.2)

    me = m.identity
    good = seal(me, _announcement(1))
    now = time.time_ns() // 1_000_000
    stale = seal(me, _announcement(2), now_ms=now - 3_600_000)
    fresh = seal(me, _announcement(5))  # a fresh nonce, then the payload swapped under the signature
    tampered = Envelope(**{**fresh.__dict__, "payload": _announcement(3).to_payload(),
                           "payload_sha256": seal(me, _announcement(3)).payload_sha256})
    other = Identity.generate()
    impersonated = seal(other, _announcement(4))  # validly signed by someone else, sent by M
    wrong_topic = seal(me, NodeDescriptor("m", me.public_key_hex, m.peer_id, (), ()))

    _attacker_publish(m, TOPIC_MODELS, good.to_bytes())
    wait_for(lambda: len(box_c) == 1, 10, "the genuine message at C")
    for data in (good.to_bytes(),  # replay: same envelope, new pubsub seqno
                 stale.to_bytes(), tampered.to_bytes(), impersonated.to_bytes(), wrong_topic.to_bytes(),
                 b"not an envelope"):
        _attacker_publish(m, TOPIC_MODELS, data)
    wait_for(lambda: sum(gb.dropped.values()) == 6, 10, "B to drop six messages")
    time.sleep(0.5)
    assert gb.dropped == {"replayed": 1, "stale": 1, "forged": 1, "wrong-origin": 1, "wrong-topic": 1,
                          "malformed": 1}
    assert len(box_b) == 1 and len(box_c) == 1
    assert sum(gc.dropped.values()) == 0  # nothing bad ever reached C: dropped at the first hop


def test_validator_check_reports_reasons_without_network() -> None:
    """The same checks, called directly (no hosts): unsigned, forged, stale, replayed."""
    from protocol.errors import BadSignature, MalformedEnvelope, ReplayedNonce, StaleEnvelope
    from protocol.p2p.host import peer_id_of

    me = Identity.generate()
    from libp2p.peer.id import ID

    origin = ID.from_base58(peer_id_of(me)).to_bytes()
    g = Gossip.__new__(Gossip)
    Gossip.__init__(g, host=None, verifier=Verifier())  # type: ignore[arg-type]
    env = seal(me, _announcement(7))
    assert g.check(TOPIC_MODELS, origin, env.to_bytes()) == env
    with pytest.raises(ReplayedNonce):
        g.check(TOPIC_MODELS, origin, env.to_bytes())
    with pytest.raises(StaleEnvelope):
        g.check(TOPIC_MODELS, origin, seal(me, _announcement(8), now_ms=1_000).to_bytes())
    forged = Envelope(**{**seal(me, _announcement(9)).__dict__, "signature": "00" * 64})
    with pytest.raises(BadSignature):
        g.check(TOPIC_MODELS, origin, forged.to_bytes())
    with pytest.raises(MalformedEnvelope):
        g.check(TOPIC_MODELS, origin, b"{}")


def test_a_subscription_missing_from_the_hello_packet_still_reaches_the_peer(make_host: HostFactory) -> None:
    """py-libp2p may build a new peer's hello before a concurrent subscribe lands: the peer must learn it anyway."""
    a, b = make_host(), make_host()

    async def hello_without_topics() -> None:  # the race, made certain: every hello `a` sends omits its topics
        build = a.pubsub.get_hello_packet

        def hello() -> Any:
            packet = build()
            del packet.subscriptions[:]
            return packet
        a.pubsub.get_hello_packet = hello
    a.call(hello_without_topics)
    ga, gb = Gossip(a), Gossip(b)
    box_a = Inbox()
    ga.subscribe(TOPIC_MODELS, box_a)
    gb.subscribe(TOPIC_MODELS, Inbox())
    b.connect(a.addrs[0])  # a's subscription now travels only in its re-announcements
    wait_for(lambda: len(gb.topic_peers(TOPIC_MODELS)) == 1, 15, "b to learn that a subscribes")
    time.sleep(1.2)  # one heartbeat: b grafts a into its mesh
    gb.publish(_announcement(7))
    wait_for(lambda: len(box_a) == 1, 10, "delivery to a")


def test_a_descriptor_naming_another_nodes_peer_id_is_malformed() -> None:
    """A validly signed descriptor must carry its own key's peer ID: another node's would let the signer take
    that node's place in every peer book."""
    from libp2p.peer.id import ID

    from protocol.errors import MalformedEnvelope
    from protocol.p2p.gossip import TOPIC_NODES
    from protocol.p2p.host import peer_id_for_public_key, peer_id_of
    from protocol.p2p.messages import ed25519_peer_id

    me, victim = Identity.generate(), Identity.generate()
    for _ in range(50):  # the pure-Python derivation is libp2p's
        key = Identity.generate().public_key_bytes
        assert ed25519_peer_id(key.hex()) == peer_id_for_public_key(key)
    origin = ID.from_base58(peer_id_of(me)).to_bytes()
    g = Gossip.__new__(Gossip)
    Gossip.__init__(g, host=None, verifier=Verifier())  # type: ignore[arg-type]
    own = seal(me, NodeDescriptor("me", me.public_key_hex, peer_id_of(me), ("/ip4/127.0.0.1/tcp/1",), ()))
    assert g.check(TOPIC_NODES, origin, own.to_bytes()) == own
    claim = seal(me, NodeDescriptor("me", me.public_key_hex, peer_id_of(victim), ("/ip4/127.0.0.1/tcp/1",), ()))
    with pytest.raises(MalformedEnvelope, match="peer_id must be the one its public key gives"):
        g.check(TOPIC_NODES, origin, claim.to_bytes())
