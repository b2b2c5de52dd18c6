"""A stopped host closes its connections: its peers see it leave, and the node restarted in the same process
with the same identity (a new port) is gossiped with again."""

from __future__ import annotations

import pytest

from protocol.identity import Identity
from protocol.p2p.gossip import TOPIC_MODELS, Gossip
from tests.protocol.p2p.conftest import HostFactory, gossip_ready, wait_for
from tests.protocol.p2p.test_gossip import Inbox, _announcement

pytestmark = pytest.mark.timeout(180)


def test_a_node_restarted_with_the_same_key_is_gossiped_with_again(make_host: HostFactory) -> None:
    identity = Identity.generate()
    peer = make_host()
    first = make_host(identity)
    first.connect(peer.addrs[0])
    peer_gossip, peer_inbox = Gossip(peer), Inbox()
    peer_gossip.subscribe(TOPIC_MODELS, peer_inbox)
    Gossip(first).subscribe(TOPIC_MODELS)
    wait_for(lambda: peer.connected_peers() == [first.peer_id], 5, "the connection")
    old_addr = first.addrs[0]

    first.stop()
    # the socket is closed, so the peer drops the connection (py-libp2p left it open: a dead connection that
    # the restarted node, with the same peer id, could not replace)
    wait_for(lambda: peer.connected_peers() == [], 5, "the peer to see the stopped host leave")

    again = make_host(identity)
    assert again.peer_id == first.peer_id and again.addrs[0] != old_addr  # a new port
    again.connect(peer.addrs[0])
    gossip, inbox = Gossip(again), Inbox()
    gossip.subscribe(TOPIC_MODELS, inbox)
    gossip_ready([gossip, peer_gossip], TOPIC_MODELS)
    peer_gossip.publish(_announcement(1))
    wait_for(lambda: len(inbox) == 1, 5, "the restarted node to receive the peer's gossip")
    gossip.publish(_announcement(2))
    wait_for(lambda: len(peer_inbox) == 1, 5, "the peer to receive the restarted node's gossip")
    assert peer_inbox.items[0][1].sender == identity.public_key_hex
