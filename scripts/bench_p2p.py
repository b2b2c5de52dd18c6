"""Benchmark the p2p layer on 127.0.0.1: connect time, gossip latency, fetch throughput, memory per host.

    .venv/bin/python scripts/bench_p2p.py [--hosts 4] [--duration 120] [--size-mib 32]

Connect time is compared with py-libp2p's stock dial (max_connections_per_peer=3, which waits the
250 ms happy-eyeballs delay); fetch throughput with a plain TCP socket copy measured in the same run.
Memory is the process RSS growth divided by the number of hosts, sampled over a bounded gossip run.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from protocol.envelope import Envelope  # noqa: E402
from protocol.identity import Identity  # noqa: E402
from protocol.p2p.gossip import TOPIC_MODELS, Gossip  # noqa: E402
from protocol.p2p.host import HostConfig, P2PHost  # noqa: E402
from protocol.p2p.messages import ArtifactManifest, ModelAnnouncement  # noqa: E402
from protocol.p2p.transfer import ArtifactServer, fetch, manifest_for  # noqa: E402


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def ann(i: int) -> ModelAnnouncement:
    h = hashlib.sha256(i.to_bytes(8, "big")).hexdigest()
    return ModelAnnouncement(h, 1, ArtifactManifest(1024, (h,)))


def stock_connect_ms(n: int) -> float:
    """Connect time with py-libp2p's default connection config (the 250 ms dial delay)."""
    import trio
    from libp2p import new_host
    from libp2p.peer.peerinfo import info_from_p2p_addr
    from multiaddr import Multiaddr

    times: list[float] = []

    async def main() -> None:
        a, b = new_host(), new_host()
        la = [Multiaddr("/ip4/127.0.0.1/tcp/0")]
        async with a.run(la), b.run(la):
            for _ in range(n):
                t = time.perf_counter()
                await b.connect(info_from_p2p_addr(a.get_addrs()[0]))
                times.append((time.perf_counter() - t) * 1000)
                await b.disconnect(a.get_id())
                await trio.sleep(0.05)
    trio.run(main)
    return statistics.median(times)


def tcp_copy_mibs(data: bytes) -> float:
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]

    def serve() -> None:
        conn, _ = srv.accept()
        conn.sendall(data)
        conn.close()
    threading.Thread(target=serve, daemon=True).start()
    t = time.perf_counter()
    c = socket.create_connection(("127.0.0.1", port))
    got = 0
    while chunk := c.recv(1 << 20):
        got += len(chunk)
    c.close()
    srv.close()
    return got / 2**20 / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--hosts", type=int, default=4)
    p.add_argument("--duration", type=float, default=120.0, help="seconds of steady gossip for the memory run")
    p.add_argument("--rate", type=float, default=20.0, help="messages/s published during the memory run")
    p.add_argument("--size-mib", type=int, default=32)
    args = p.parse_args()

    base = rss_mib()
    hosts = [P2PHost(Identity.generate(), HostConfig(enable_dht=False)).start() for _ in range(args.hosts)]
    after_start = rss_mib()

    # connect time: a chain 0-1-2-..., then reconnects measured on a fresh pair.
    times = []
    for a, b in zip(hosts, hosts[1:], strict=False):
        t = time.perf_counter()
        b.connect(a.addrs[0])
        times.append((time.perf_counter() - t) * 1000)
    ours = statistics.median(times)
    stock = stock_connect_ms(3)
    print(f"connect: {ours:.1f} ms median (ours) vs {stock:.1f} ms (py-libp2p defaults): {stock / ours:.1f}x")

    gossips = [Gossip(h) for h in hosts]
    arrivals: dict[str, list[float]] = {}
    lock = threading.Lock()

    def on_msg(message: object, env: Envelope) -> None:
        with lock:
            arrivals.setdefault(env.nonce, []).append(time.perf_counter())
    for g in gossips:
        g.subscribe(TOPIC_MODELS, on_msg)
    time.sleep(2.5)  # subscriptions exchanged, mesh formed by heartbeats

    # gossip latency: publish at the chain's head, time to reach every other host.
    sent: dict[str, float] = {}
    for i in range(50):
        t = time.perf_counter()
        env = gossips[0].publish(ann(i))
        sent[env.nonce] = t
        time.sleep(0.02)
    time.sleep(2)
    lat_all = [max(arrivals[n]) - sent[n] for n in sent if len(arrivals.get(n, [])) == args.hosts - 1]
    lat_one = [min(arrivals[n]) - sent[n] for n in sent if arrivals.get(n)]
    print(f"gossip: {len(lat_all)}/50 reached all {args.hosts - 1} peers over a {args.hosts - 1}-hop chain; "
          f"first peer p50 {statistics.median(lat_one) * 1000:.1f} ms, "
          f"last peer p50 {statistics.median(lat_all) * 1000:.1f} ms, p95 "
          f"{sorted(lat_all)[int(0.95 * len(lat_all)) - 1] * 1000:.1f} ms")

    # fetch throughput over one hop.
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "model.bin"
        data = os.urandom(args.size_mib << 20)
        src.write_bytes(data)
        server = ArtifactServer(hosts[1])
        hosts[1].call(server.install)
        a = server.add(src, manifest_for(src))
        t = time.perf_counter()
        fetch(hosts[0], a, [hosts[1].peer_id], Path(tmp) / "got.bin", max_bytes=1 << 34)
        ours_mibs = args.size_mib / (time.perf_counter() - t)
        raw = tcp_copy_mibs(data)
        print(f"fetch: {ours_mibs:.1f} MiB/s for {args.size_mib} MiB (chunk 1 MiB, verified) vs raw TCP "
              f"{raw:.0f} MiB/s in-process: {raw / ours_mibs:.0f}x slower")

    # memory over a bounded run of steady gossip.
    start_rss = rss_mib()
    samples = []
    deadline = time.monotonic() + args.duration
    i = 1000
    while time.monotonic() < deadline:
        gossips[i % args.hosts].publish(ann(i))
        i += 1
        time.sleep(1 / args.rate)
        if i % int(args.rate * 10) == 0:
            samples.append(rss_mib())
    end_rss = rss_mib()
    per_host_start = (after_start - base) / args.hosts
    print(f"memory: {per_host_start:.1f} MiB RSS per idle host at start; after {args.duration:.0f}s of "
          f"{args.rate:g} msg/s: process {start_rss:.0f} -> {end_rss:.0f} MiB "
          f"({(end_rss - start_rss) / args.hosts:+.1f} MiB per host), peak RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB; "
          f"samples {[round(s) for s in samples]}")
    for h in hosts:
        h.stop()


if __name__ == "__main__":
    main()
