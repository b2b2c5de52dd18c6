"""node/p2p.py and the `peers` CLI: peers.json bootstrap, federation hook, identity peer ID."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from node.errors import NodeError, UsageError
from node.p2p import NodeP2P, P2PConfig, PeerBook, check_multiaddr
from protocol.identity import Identity
from protocol.p2p.host import peer_id_of
from protocol.p2p.messages import FederationAnnouncement, MembershipRules, Schedule
from tests.protocol.p2p.conftest import wait_for

pytestmark = pytest.mark.timeout(180)
LOCAL = P2PConfig(listen=("/ip4/127.0.0.1/tcp/0",), dht=False)


def test_federation_learned_through_gossip_reaches_the_hook(tmp_path: Path) -> None:
    a_home, b_home = tmp_path / "a", tmp_path / "b"
    a_home.mkdir()
    b_home.mkdir()
    coord = Identity.generate()
    with NodeP2P(a_home, "coord", coord, LOCAL) as a:
        PeerBook.load(b_home).add(a.host.addrs[0], "coord")
        got: list[Any] = []
        seen = threading.Event()
        b = NodeP2P(b_home, "member", Identity.generate(), LOCAL)
        b.on_federation(lambda ann, env: (got.append((ann, env)), seen.set()))
        with b:
            assert a.host.peer_id in b.host.connected_peers()
            wait_for(lambda: b.host.peer_id in a.discovery.known, 10, "a to learn b")
            ann = FederationAnnouncement("helpful-1", coord.public_key_hex, "127.0.0.1:9092",
                                         MembershipRules(min_members=2), Schedule(start_ms=0, rounds=3))
            wait_for(lambda: a.gossip.topic_peers("rewardnode/federations/v1"), 10, "b on the topic")
            a.gossip.publish(ann)
            assert seen.wait(10)
            wait_for(lambda: any(p.get("verified") for p in PeerBook.load(b_home).peers), 10, "b to record a")
            wait_for(lambda: PeerBook.load(a_home).peers, 10, "a to record b")
    assert got[0][0] == ann and got[0][1].sender == coord.public_key_hex
    # Both peer books now hold the other node, verified by its signed descriptor, with a last-seen time.
    [b_knows] = PeerBook.load(b_home).peers
    assert b_knows["name"] == "coord" and b_knows["public_key"] == coord.public_key_hex and b_knows["last_seen_ms"]
    [a_knows] = PeerBook.load(a_home).peers
    assert a_knows["peer_id"] == b.host.peer_id and a_knows["verified"] and a_knows["source"] == "discovered"
    assert a_knows["addr"].endswith(f"/p2p/{b.host.peer_id}")


def test_config_and_peer_book_errors(tmp_path: Path) -> None:
    with pytest.raises(NodeError, match="unknown key"):
        P2PConfig.from_table({"listn": []})
    with pytest.raises(NodeError, match="list of strings"):
        P2PConfig.from_table({"bootstrap": "x"})
    assert P2PConfig.from_table({"dht": False, "max_fetch_mib": 10}).max_fetch_bytes == 10 << 20
    book = PeerBook.load(tmp_path)
    with pytest.raises(UsageError):
        book.add("/ip4/1.2.3.4/tcp/1")
    addr = "/ip4/1.2.3.4/tcp/4001/p2p/" + peer_id_of(Identity.generate())
    assert book.add(addr) and not book.add(addr)
    assert PeerBook.load(tmp_path).addrs == [addr]


def test_p2p_addresses_are_parsed_not_only_shaped() -> None:
    """An address that can never be dialled is refused where it is given (peers add, [p2p] lists)."""
    peer, sha256_peer = peer_id_of(Identity.generate()), "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"
    good = P2PConfig.from_table({"listen": ["/ip4/127.0.0.1/tcp/0", "/ip6/::/tcp/4001"],
                                 "announce": ["/dns4/node.example.org/tcp/4001", "/ip4/203.0.113.5/tcp/4001"],
                                 "bootstrap": [f"/ip4/198.51.100.7/tcp/4001/p2p/{peer}",
                                               f"/dns/b.example.org/tcp/1/p2p/{sha256_peer}"]})
    assert good.listen[0] == "/ip4/127.0.0.1/tcp/0" and len(good.bootstrap) == 2
    for table, needle in [({"listen": ["garbage"]}, "listen address 'garbage' is invalid (unknown protocol"),
                          ({"listen": ["/dns/x.org/tcp/1"]}, "not a DNS name"),
                          ({"announce": ["/ip4/1.2.3.4/tcp/0"]}, "port 0 is not dialable"),
                          ({"announce": ["/ip4/1.2.3.4/udp/1"]}, "a host and a TCP port"),
                          ({"bootstrap": [f"/ip4/1.2.3.256/tcp/1/p2p/{peer}"]}, "is not IPv4"),
                          ({"bootstrap": ["/ip4/1.2.3.4/tcp/1/p2p/" + "x" * 45]}, "not a base58 multihash"),
                          ({"bootstrap": ["/ip4/1.2.3.4/tcp/1/p2p/bafzbeigai3eoy2ccc7ybwjfz5r3rdxqrinwi4rw"
                                          "ytly24tdbh6yk7zslrm"]}, "is not base58")]:
        with pytest.raises(NodeError, match="give the form /ip") as raised:
            P2PConfig.from_table(table)
        assert needle in str(raised.value) and "\n" not in str(raised.value)
    with pytest.raises(UsageError, match="12D3KooW"):
        check_multiaddr(f"/ip4/1.2.3.4/tcp/1/p2p/{peer[:-1]}")  # one character short: not a multihash
    assert check_multiaddr(f" /ip6/::1/tcp/1/p2p/{peer} ") == f"/ip6/::1/tcp/1/p2p/{peer}"


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "node.cli", "--home", str(home), *args],
                          capture_output=True, text=True, timeout=60)


def test_cli_identity_shows_peer_id_and_peers_add(tmp_path: Path) -> None:
    home = tmp_path / "n"
    assert _cli(home, "init", "--name", "org-a").returncode == 0
    info = json.loads(_cli(home, "identity", "--json").stdout)
    assert info["peer_id"].startswith("12D3KooW") and info["public_key"]
    assert info["addresses"] == [f"/ip4/0.0.0.0/tcp/4001/p2p/{info['peer_id']}"]
    addr = f"/ip4/127.0.0.1/tcp/4001/p2p/{info['peer_id']}"
    assert _cli(home, "peers", "add", addr).returncode == 0
    listed = json.loads(_cli(home, "peers", "--json").stdout)
    assert [p["addr"] for p in listed["peers"]] == [addr]
    bad = _cli(home, "peers", "add", "nonsense")
    assert bad.returncode == 2 and "not a peer address" in bad.stderr
