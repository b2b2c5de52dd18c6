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


def _peer(port: int = 4001) -> tuple[Identity, str, str]:
    """A fresh peer: its identity, peer ID and an address at 127.0.0.1:`port`."""
    ident = Identity.generate()
    pid = peer_id_of(ident)
    return ident, pid, f"/ip4/127.0.0.1/tcp/{port}/p2p/{pid}"


def test_a_running_node_keeps_peers_added_by_hand_meanwhile(tmp_path: Path) -> None:
    """`serve` loads peers.json once: a peer added by `peers add` (or probed) later survives its writes."""
    serving = PeerBook.load(tmp_path)  # the running node's book, loaded at start
    _, _, by_hand = _peer(4001)
    assert PeerBook.load(tmp_path).add(by_hand, "by-hand")  # `rewardnode peers add` while it runs
    met, met_id, met_addr = _peer(4002)
    serving.record("met", met.public_key_hex, met_id, ["/ip4/127.0.0.1/tcp/4002"])
    assert {p["addr"] for p in PeerBook.load(tmp_path).peers} == {by_hand, met_addr}
    assert serving.addrs == [by_hand, met_addr]  # the running node now knows the hand-added peer too
    _, _, later = _peer(4003)
    PeerBook.load(tmp_path).add(later)
    PeerBook.load(tmp_path).mark_seen([by_hand])  # `peers --probe`
    serving.peers[1]["name"] = "renamed"
    serving.save()  # a whole-book save merges by peer ID and address: nothing of the others' is lost
    saved = {p["addr"]: p for p in PeerBook.load(tmp_path).peers}
    assert list(saved) == [by_hand, met_addr, later]
    assert saved[by_hand]["last_seen_ms"] and saved[met_addr]["name"] == "renamed"


def test_concurrent_writers_take_turns_on_peers_json(tmp_path: Path) -> None:
    """Each change re-reads peers.json under a lock: writers that all loaded an empty book lose nothing."""
    books = [PeerBook.load(tmp_path) for _ in range(8)]
    addrs = [[_peer(5000 + 10 * i + j)[2] for j in range(5)] for i in range(len(books))]
    threads = [threading.Thread(target=lambda b=b, a=a: [b.add(x) for x in a]) for b, a in zip(books, addrs,
                                                                                               strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(PeerBook.load(tmp_path).addrs) == sorted(x for a in addrs for x in a)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_a_peer_that_moved_is_recorded_at_its_new_address(tmp_path: Path) -> None:
    ident, pid, old = _peer(4001)
    book = PeerBook.load(tmp_path)
    assert book.add(old, "org-b")
    book.record("org-b", ident.public_key_hex, pid, ["/ip4/127.0.0.1/tcp/4001"])
    [first] = PeerBook.load(tmp_path).peers
    book.record("org-b", ident.public_key_hex, pid, ["/ip4/0.0.0.0/tcp/4555", "/ip4/127.0.0.1/tcp/4555"])
    # the address added by hand stays (a peer behind NAT announces its private one); the announced one joins it
    kept, moved = PeerBook.load(tmp_path).peers
    assert kept["addr"] == old and moved["addr"] == f"/ip4/127.0.0.1/tcp/4555/p2p/{pid}"  # 0.0.0.0: passed over
    assert moved["last_seen_ms"] >= first["last_seen_ms"] and moved["name"] == "org-b" and moved["verified"]
    book.record("org-b", ident.public_key_hex, pid, ["/ip4/127.0.0.1/tcp/4555", "/ip4/10.0.0.2/tcp/4555"])
    assert PeerBook.load(tmp_path).addrs == [old, moved["addr"]]  # still announced: kept
    book.record("org-b", ident.public_key_hex, pid, ["/ip4/0.0.0.0/tcp/4555"])
    assert PeerBook.load(tmp_path).addrs == [old, moved["addr"]]  # nothing dialable announced: kept
    book.record("org-b", ident.public_key_hex, pid, ["/ip4/127.0.0.1/tcp/4777"])  # the discovered entry moves
    assert PeerBook.load(tmp_path).addrs == [old, f"/ip4/127.0.0.1/tcp/4777/p2p/{pid}"]


class _FakeHost:
    """What Discovery's descriptor handler uses of a host: no network."""

    peer_id = "self"
    running = False

    def __init__(self) -> None:
        self.dialed: list[str] = []

    def connected_peers(self) -> list[str]:
        return []

    def connect(self, addr: str, timeout: float | None = None) -> str:
        self.dialed.append(addr)
        return addr


def test_discovery_reports_every_peer_again_throttled_and_a_move_at_once() -> None:
    from protocol.p2p.discovery import Discovery
    from protocol.p2p.messages import NodeDescriptor

    host, heard = _FakeHost(), []
    disco = Discovery(host, None, name="me", on_peer=heard.append,  # type: ignore[arg-type]
                      report_every_s=3600)
    ident, pid, _ = _peer()
    at_a = NodeDescriptor("org-b", ident.public_key_hex, pid, ("/ip4/127.0.0.1/tcp/4001",))
    at_b = NodeDescriptor("org-b", ident.public_key_hex, pid, ("/ip4/127.0.0.1/tcp/4555",))
    for d in (at_a, at_a, at_a, at_b, at_b):
        disco._on_descriptor(d, None)  # type: ignore[arg-type]
    assert heard == [at_a, at_b]  # the repeats fall in the throttle window; the move does not wait
    assert host.dialed == [f"/ip4/127.0.0.1/tcp/4001/p2p/{pid}", f"/ip4/127.0.0.1/tcp/4555/p2p/{pid}"]
    assert disco.known[pid] == at_b
    disco.report_every_s = 0
    disco._on_descriptor(at_b, None)  # type: ignore[arg-type]
    assert heard == [at_a, at_b, at_b]  # once the window passed, the same descriptor refreshes last-seen
    with pytest.raises(ValueError, match="report_every_s must be >= 0"):
        Discovery(host, None, name="me", report_every_s=-1)  # type: ignore[arg-type]


_NODE_PROCESS = """
import sys
from pathlib import Path
from node.p2p import NodeP2P, P2PConfig
from protocol.identity import Identity
home = Path(sys.argv[1])
config = P2PConfig(listen=("/ip4/127.0.0.1/tcp/0",), dht=False)
with NodeP2P(home, "b", Identity.load(home / "identity.key"), config) as node:
    print(node.host.addrs[0], flush=True)
    sys.stdin.read()
"""


def _node_process(home: Path) -> tuple[subprocess.Popen[str], str]:
    """A node in its own process (a restart closes its connections, as a real one does), and its address."""
    proc = subprocess.Popen([sys.executable, "-c", _NODE_PROCESS, str(home)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def test_a_restarted_peer_on_a_new_port_is_recorded_there(tmp_path: Path) -> None:
    """A peer restarts on another address and announces it: the running node's peers.json follows it."""
    a_home, b_home = tmp_path / "a", tmp_path / "b"
    a_home.mkdir()
    b_home.mkdir()
    Identity.generate().save(b_home / "identity.key")
    with NodeP2P(a_home, "a", Identity.generate(), LOCAL) as a:
        PeerBook.load(b_home).add(a.host.addrs[0], "a")
        b1, old = _node_process(b_home)
        try:
            wait_for(lambda: PeerBook.load(a_home).addrs == [old], 10, "a to record b")
        finally:
            b1.kill()
            b1.wait()
        [before] = PeerBook.load(a_home).peers
        b2, new = _node_process(b_home)
        try:
            assert new != old
            wait_for(lambda: PeerBook.load(a_home).addrs == [new], 10, "a to record b's new address")
        finally:
            b2.kill()
            b2.wait()
    [after] = PeerBook.load(a_home).peers
    assert after["last_seen_ms"] > before["last_seen_ms"] and after["source"] == "discovered"


def test_cli_peers_add_and_probe_beside_a_running_node_and_json_keeps_the_source(tmp_path: Path) -> None:
    home = tmp_path / "n"
    assert _cli(home, "init", "--name", "org-a").returncode == 0
    running = PeerBook.load(home)  # `serve`'s book, loaded before the commands below
    (tmp_path / "up").mkdir()
    with NodeP2P(tmp_path / "up", "up", Identity.generate(), LOCAL) as up:
        by_hand = up.host.addrs[0]
        assert _cli(home, "peers", "add", by_hand, "--name", "by-hand").returncode == 0
        probed = json.loads(_cli(home, "peers", "--probe", "--json").stdout)["peers"]
    assert probed[0]["reachable"] and probed[0]["last_seen_ms"]
    met, met_id, met_addr = _peer(4002)
    running.record("met", met.public_key_hex, met_id, ["/ip4/127.0.0.1/tcp/4002"])  # serve writes after them
    listed = json.loads(_cli(home, "peers", "--json").stdout)["peers"]
    assert [(p["addr"], p["source"]) for p in listed] == [(by_hand, "peers.json"), (met_addr, "discovered")]
    assert listed[0]["last_seen_ms"] >= probed[0]["last_seen_ms"]  # the probe's result was kept


def test_discovery_announces_again_on_a_heartbeat_until_stopped() -> None:
    """A node re-announces itself, so its peers' last-seen times stay fresh and a peer that missed the first
    announcement still learns of it."""
    import time

    from protocol.p2p.discovery import Discovery

    host = _FakeHost()
    host.running = True
    announced: list[float] = []
    disco = Discovery(host, None, name="me", heartbeat_s=0.05)  # type: ignore[arg-type]
    disco.announce = lambda wait_s=5.0: announced.append(wait_s) or True  # type: ignore[method-assign]
    disco.start_heartbeat()
    deadline = time.monotonic() + 5
    while len(announced) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    disco.stop()
    time.sleep(0.15)  # a beat already waiting may still fire once
    n = len(announced)
    time.sleep(0.2)
    assert n >= 3 and len(announced) == n  # beats, then none after stop
    with pytest.raises(ValueError, match="heartbeat_s must be >= 0"):
        Discovery(host, None, name="me", heartbeat_s=-1)  # type: ignore[arg-type]
