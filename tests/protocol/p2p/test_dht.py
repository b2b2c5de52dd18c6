"""Finding federation members through the Kademlia DHT (provider records), via a bootstrap peer."""

from __future__ import annotations

import pytest

from protocol.p2p.discovery import Discovery, federation_key
from protocol.p2p.gossip import Gossip
from tests.protocol.p2p.conftest import HostFactory, wait_for

pytestmark = pytest.mark.timeout(180)


def test_a_member_advertised_in_the_dht_is_found_by_a_newcomer(make_host: HostFactory) -> None:
    boot = make_host(enable_dht=True)
    Discovery(boot, Gossip(boot), name="boot").start(wait_s=0)
    member = make_host(enable_dht=True)
    d_member = Discovery(member, Gossip(member), name="member", bootstrap=boot.addrs)
    assert d_member.start(wait_s=5) == []
    wait_for(lambda: boot.peer_id in member.connected_peers(), 10, "member connected to boot")
    assert d_member.advertise("fed-1")

    newcomer = make_host(enable_dht=True)
    d_new = Discovery(newcomer, Gossip(newcomer), name="newcomer", bootstrap=boot.addrs)
    assert d_new.start(wait_s=5) == []
    found: list[str] = []

    def look() -> bool:
        found[:] = d_new.find_members("fed-1", timeout=10)
        return member.peer_id in found

    wait_for(look, 15, "the newcomer to find the member by its provider record")
    assert newcomer.peer_id not in found
    # Another federation's key finds nobody.
    assert member.peer_id not in d_new.find_members("fed-2", timeout=5)
    assert federation_key("fed-1") != federation_key("fed-2")
