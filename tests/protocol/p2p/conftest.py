"""Fixtures: real py-libp2p hosts on 127.0.0.1, stopped after each test."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from protocol.identity import Identity
from protocol.p2p.gossip import Gossip
from protocol.p2p.host import HostConfig, P2PHost

pytest.importorskip("libp2p")

HostFactory = Callable[..., P2PHost]


@pytest.fixture
def make_host() -> Iterator[HostFactory]:
    hosts: list[P2PHost] = []

    def make(identity: Identity | None = None, **config: object) -> P2PHost:
        host = P2PHost(identity or Identity.generate(), HostConfig(**config))  # type: ignore[arg-type]
        hosts.append(host)
        return host.start()

    yield make
    for host in hosts:
        host.stop()


SLACK = 4.0
"""Waits are multiplied by this: a loaded 2-core CI machine delivers late, a bug never delivers."""


def wait_for(predicate: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll `predicate` until true; fail the test after `timeout` x SLACK seconds."""
    timeout *= SLACK
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.02)


def gossip_ready(gossips: list[Gossip], topic: str, n_peers: int = 1, timeout: float = 10.0) -> None:
    """Wait until each node sees at least `n_peers` peers on `topic` (the mesh can carry messages)."""
    for g in gossips:
        wait_for(lambda g=g: len(g.topic_peers(topic)) >= n_peers, timeout, f"peers on {topic}")
