"""Discovery through a bootstrap peer; fetch by hash with a corrupted chunk re-fetched; resumable fetch."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from protocol.canonical import canonical_json, parse_json
from protocol.p2p.discovery import Discovery
from protocol.p2p.gossip import Gossip
from protocol.p2p.host import P2PHost
from protocol.p2p.messages import ModelAnnouncement
from protocol.p2p.transfer import (
    FETCH_PROTOCOL,
    MAX_REQUEST_BYTES,
    ArtifactServer,
    TransferError,
    fetch,
    manifest_for,
    read_frame,
    write_frame,
)
from tests.protocol.p2p.conftest import HostFactory, wait_for

pytestmark = pytest.mark.timeout(180)
CHUNK = 64 * 1024


def test_nodes_find_each_other_through_one_bootstrap_peer(make_host: HostFactory) -> None:
    boot = make_host()
    Discovery(boot, Gossip(boot), name="boot").start(wait_s=0)
    others = [make_host() for _ in range(3)]
    discos = [Discovery(h, Gossip(h), name=f"org-{i}", capabilities=("rm",), bootstrap=boot.addrs)
              for i, h in enumerate(others)]
    for d in discos:
        assert d.start(wait_s=5) == []
    everyone = {h.peer_id for h in [boot, *others]}
    for h, d in zip(others, discos, strict=True):
        wait_for(lambda h=h, d=d: everyone - {h.peer_id} <= set(d.known), 15, f"{h.peer_id} to learn every node")
        wait_for(lambda h=h: everyone - {h.peer_id} <= set(h.connected_peers()), 15, "direct connections")
    desc = discos[0].known[others[1].peer_id]
    assert desc.name == "org-1" and desc.public_key == others[1].identity.public_key_hex
    assert desc.capabilities == ("rm",)


def test_bootstrap_failure_is_reported_not_raised(make_host: HostFactory) -> None:
    h = make_host()
    dead = "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWQ2QW2f2QWN2LkTPqFzJmDnEaDG74Lumpybps4ohP2ifn"
    assert Discovery(h, Gossip(h), name="x", bootstrap=[dead]).start(wait_s=0) == [dead]


def _artifact(tmp_path: Path, size: int) -> Path:
    path = tmp_path / "model.safetensors"
    path.write_bytes(os.urandom(size))
    return path


def _serving_host(make_host: HostFactory, files: list[Path]) -> tuple[P2PHost, ArtifactServer]:
    host = make_host()
    server = ArtifactServer(host)
    for f in files:
        server.add(f, manifest_for(f, chunk_size=CHUNK))
    host.call(server.install)
    return host, server


def _install_malicious(host: P2PHost, ann: ModelAnnouncement, data: bytes, *, corrupt: int | None = None,
                       stop_after: int | None = None) -> None:
    """A peer speaking the fetch protocol but flipping a byte of one chunk, or hanging up early."""
    from libp2p.custom_types import TProtocol

    async def handle(stream: Any) -> None:
        req = parse_json(await read_frame(stream, MAX_REQUEST_BYTES))
        await write_frame(stream, canonical_json({"ok": True, "size": ann.size}))
        c = ann.manifest.chunk_size
        for i in range(req["first_chunk"], len(ann.manifest.chunk_sha256)):
            if stop_after is not None and i >= stop_after:
                await stream.close()  # hang up mid-transfer
                return
            block = bytearray(data[i * c:(i + 1) * c])
            if i == corrupt:
                block[7] ^= 0xFF
            await write_frame(stream, bytes(block))
        await stream.close()

    async def install() -> None:
        host.libp2p_host.set_stream_handler(TProtocol(FETCH_PROTOCOL), handle)
    host.call(install)


def test_fetch_by_hash_verifies_and_refetches_a_corrupt_chunk(make_host: HostFactory, tmp_path: Path) -> None:
    src = _artifact(tmp_path, 10 * CHUNK + 123)
    ann = manifest_for(src, chunk_size=CHUNK)
    liar = make_host()
    _install_malicious(liar, ann, src.read_bytes(), corrupt=3)
    honest, server = _serving_host(make_host, [])
    server.add(src, ann)
    client = make_host()
    for h in (liar, honest):
        client.connect(h.addrs[0])
    dest = tmp_path / "got" / "model.safetensors"
    result = fetch(client, ann, [liar.peer_id, honest.peer_id], dest, max_bytes=1 << 20)
    assert dest.read_bytes() == src.read_bytes()
    assert result.corrupt_chunks == 1
    assert result.providers_used == [liar.peer_id, honest.peer_id]
    assert server.stats.bytes_sent == ann.size - 3 * CHUNK  # the honest peer served chunk 3 onwards only
    assert not (tmp_path / "got" / "model.safetensors.part").exists()


def test_threads_fetching_into_the_same_file_take_turns(make_host: HostFactory, tmp_path: Path) -> None:
    """Two threads of one node fetch the same artifact to the same place at once (two federations offering
    one file, say): they would share DEST.part; both must end with the verified file."""
    from concurrent.futures import ThreadPoolExecutor

    src = _artifact(tmp_path, 40 * CHUNK + 7)
    ann = manifest_for(src, chunk_size=CHUNK)
    honest, server = _serving_host(make_host, [src])
    client = make_host()
    client.connect(honest.addrs[0])
    dest = tmp_path / "got" / "model.safetensors"
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: fetch(client, ann, [honest.peer_id], dest, max_bytes=1 << 24), range(4)))
    assert dest.read_bytes() == src.read_bytes()
    assert sum(r.bytes_fetched for r in results) == ann.size  # fetched once; the others found it done
    assert server.stats.bytes_sent == ann.size


def test_fetch_resumes_from_the_verified_part(make_host: HostFactory, tmp_path: Path) -> None:
    src = _artifact(tmp_path, 8 * CHUNK)
    ann = manifest_for(src, chunk_size=CHUNK)
    flaky = make_host()
    _install_malicious(flaky, ann, src.read_bytes(), stop_after=5)
    client = make_host()
    client.connect(flaky.addrs[0])
    dest = tmp_path / "model.bin"
    with pytest.raises(TransferError, match="resume"):
        fetch(client, ann, [flaky.peer_id], dest, max_bytes=1 << 20, attempts=2)
    part = tmp_path / "model.bin.part"
    assert part.stat().st_size == 5 * CHUNK and not dest.exists()
    honest, server = _serving_host(make_host, [src])
    client.connect(honest.addrs[0])
    result = fetch(client, ann, [honest.peer_id], dest, max_bytes=1 << 20)
    assert result.resumed_chunks == 5 and result.bytes_fetched == 3 * CHUNK
    assert server.stats.bytes_sent == 3 * CHUNK
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == ann.sha256


def test_fetch_refuses_an_artifact_over_the_size_limit(make_host: HostFactory, tmp_path: Path) -> None:
    src = _artifact(tmp_path, 3 * CHUNK)
    honest, _ = _serving_host(make_host, [src])
    ann = manifest_for(src, chunk_size=CHUNK)
    client = make_host()
    with pytest.raises(TransferError, match="over the"):
        fetch(client, ann, [honest.peer_id], tmp_path / "x", max_bytes=CHUNK)
    assert not (tmp_path / "x.part").exists()


def test_unknown_hash_is_refused(make_host: HostFactory, tmp_path: Path) -> None:
    src = _artifact(tmp_path, 100)
    honest, _ = _serving_host(make_host, [])
    client = make_host()
    client.connect(honest.addrs[0])
    with pytest.raises(TransferError, match="refused"):
        fetch(client, manifest_for(src), [honest.peer_id], tmp_path / "y", max_bytes=1 << 20, attempts=1)
