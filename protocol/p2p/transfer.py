"""Fetch an artifact by SHA-256 from any peer that announced it: chunked, verified, resumable, bounded.

Protocol `/rewardnode/fetch/1.0.0`, one request per stream, every frame a 4-byte big-endian length
and its bytes:

    client -> server  canonical JSON {"sha256": H, "chunk_size": C, "first_chunk": i}
    server -> client  canonical JSON {"ok": true, "size": N} | {"ok": false, "error": "..."}
    server -> client  chunk i, chunk i+1, ... (each one frame of C bytes, the last possibly shorter)

The client checks each chunk against the chunk hashes of the signed `ModelAnnouncement` as it
arrives: a bad chunk is thrown away and fetched again (from the next provider, or the same one), so a
lying peer wastes at most one chunk. Good chunks are appended to `DEST.part`; a later `fetch` re-checks
the chunks already there and continues after them. The whole file is hashed before it is renamed
into place. Sizes are bounded by the caller's `max_bytes` and by the announcement, never by the peer.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from protocol.canonical import canonical_json, parse_json
from protocol.errors import CanonicalEncodingError, ProtocolError
from protocol.p2p.host import P2PHost
from protocol.p2p.messages import ArtifactManifest, ModelAnnouncement

log = logging.getLogger(__name__)

FETCH_PROTOCOL = "/rewardnode/fetch/1.0.0"
DEFAULT_CHUNK_SIZE = 1 << 20
MAX_REQUEST_BYTES = 4096
MIN_CHUNK_SIZE = 1 << 10
MAX_CHUNK_SIZE = 16 << 20
_LEN = struct.Struct(">I")


class TransferError(ProtocolError):
    """An artifact could not be fetched or served (the message says why and what to try)."""


# --- framing ----------------------------------------------------------------------------------


async def write_frame(stream: Any, data: bytes) -> None:
    """Write one length-prefixed frame."""
    await stream.write(_LEN.pack(len(data)) + data)


async def read_exactly(stream: Any, n: int) -> bytes:
    """Read exactly `n` bytes or raise `TransferError` (the peer closed early)."""
    buf = bytearray()
    while len(buf) < n:
        try:
            part = await stream.read(n - len(buf))
        except Exception as exc:  # noqa: BLE001 - StreamEOF, StreamReset, ...
            raise TransferError(f"stream ended after {len(buf)} of {n} bytes ({type(exc).__name__})") from None
        if not part:
            raise TransferError(f"stream ended after {len(buf)} of {n} bytes")
        buf += part
    return bytes(buf)


async def read_frame(stream: Any, max_len: int) -> bytes:
    """Read one frame, refusing one longer than `max_len` before reading its body."""
    (n,) = _LEN.unpack(await read_exactly(stream, _LEN.size))
    if n > max_len:
        raise TransferError(f"peer sent a {n}-byte frame, over the {max_len}-byte limit; dropping the stream")
    return await read_exactly(stream, n)


# --- manifests --------------------------------------------------------------------------------


def manifest_for(path: str | os.PathLike[str], *, chunk_size: int = DEFAULT_CHUNK_SIZE,
                 kind: str = "reward-model", format: str = "safetensors") -> ModelAnnouncement:
    """Hash a file whole and per chunk: the announcement a node publishes to offer it."""
    whole = hashlib.sha256()
    chunks: list[str] = []
    size = 0
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            whole.update(block)
            chunks.append(hashlib.sha256(block).hexdigest())
            size += len(block)
    if not chunks:
        chunks.append(hashlib.sha256(b"").hexdigest())
    return ModelAnnouncement(whole.hexdigest(), size, ArtifactManifest(chunk_size, tuple(chunks), kind, format))


def _chunk_len(ann: ModelAnnouncement, index: int) -> int:
    c = ann.manifest.chunk_size
    return max(0, min(c, ann.size - index * c))


# --- serving ----------------------------------------------------------------------------------


@dataclass
class ServerStats:
    requests: int = 0
    chunks_sent: int = 0
    bytes_sent: int = 0


class ArtifactServer:
    """Serves registered files by SHA-256 to any peer that asks (they are announced publicly anyway)."""

    def __init__(self, host: P2PHost) -> None:
        self.host = host
        self.stats = ServerStats()
        self._files: dict[str, tuple[Path, ModelAnnouncement]] = {}
        self._lock = threading.Lock()

    def add(self, path: str | os.PathLike[str], announcement: ModelAnnouncement | None = None) -> ModelAnnouncement:
        """Offer `path`; returns its announcement (computed if not given) for `Gossip.publish`."""
        ann = announcement or manifest_for(path)
        with self._lock:
            self._files[ann.sha256] = (Path(path), ann)
        return ann

    async def install(self) -> None:
        """Register the stream handler (from the trio thread; `P2PHost.on_start(server.install_hook)`)."""
        from libp2p.custom_types import TProtocol

        self.host.libp2p_host.set_stream_handler(TProtocol(FETCH_PROTOCOL), self._handle)

    async def install_hook(self, host: P2PHost) -> None:
        await self.install()

    async def _handle(self, stream: Any) -> None:
        try:
            await self._serve(stream)
        except TransferError as exc:
            log.info("fetch request failed: %s", exc)
        except Exception as exc:  # noqa: BLE001 - a peer's bad request must not crash the host
            log.info("fetch stream error: %r", exc)
        finally:
            with trio.move_on_after(2):
                try:
                    await stream.close()
                except Exception:  # noqa: BLE001
                    pass

    async def _serve(self, stream: Any) -> None:
        self.stats.requests += 1
        try:
            req = parse_json(await read_frame(stream, MAX_REQUEST_BYTES))
        except CanonicalEncodingError:
            await write_frame(stream, canonical_json({"ok": False, "error": "request is not JSON"}))
            return
        with self._lock:
            entry = self._files.get(str(req.get("sha256"))) if isinstance(req, dict) else None
        if entry is None:
            await write_frame(stream, canonical_json({"ok": False, "error": "unknown artifact"}))
            return
        path, ann = entry
        first, c = req.get("first_chunk"), req.get("chunk_size")
        if not isinstance(c, int) or isinstance(c, bool) or not MIN_CHUNK_SIZE <= c <= MAX_CHUNK_SIZE:
            await write_frame(stream, canonical_json({"ok": False, "error": "bad chunk_size"}))
            return
        n_chunks = max(1, -(-ann.size // c))
        if not isinstance(first, int) or isinstance(first, bool) or not 0 <= first < n_chunks:
            await write_frame(stream, canonical_json({"ok": False, "error": "bad first_chunk"}))
            return
        await write_frame(stream, canonical_json({"ok": True, "size": ann.size}))
        with open(path, "rb") as f:
            f.seek(first * c)
            for _ in range(first, n_chunks):
                block = await trio.to_thread.run_sync(f.read, c)
                await write_frame(stream, block)
                self.stats.chunks_sent += 1
                self.stats.bytes_sent += len(block)


# --- fetching ---------------------------------------------------------------------------------


@dataclass
class FetchResult:
    path: Path
    bytes_fetched: int
    """Bytes received over the network this call (excluding chunks resumed from `.part`)."""
    resumed_chunks: int
    """Chunks already present and valid in `.part` when the call started."""
    corrupt_chunks: int
    """Chunks that failed their hash and were fetched again."""
    providers_used: list[str] = field(default_factory=list)


def _resume(part: Path, ann: ModelAnnouncement) -> int:
    """Number of leading chunks of `part` that match the manifest; truncates the rest away."""
    if not part.exists():
        return 0
    good = 0
    with open(part, "r+b") as f:
        for i, expected in enumerate(ann.manifest.chunk_sha256):
            block = f.read(_chunk_len(ann, i))
            if len(block) != _chunk_len(ann, i) or hashlib.sha256(block).hexdigest() != expected:
                break
            good = i + 1
        f.truncate(sum(_chunk_len(ann, i) for i in range(good)))
    return good


_dest_locks: dict[Path, threading.Lock] = {}
_dest_locks_guard = threading.Lock()


def _dest_lock(dest: Path) -> threading.Lock:
    with _dest_locks_guard:
        return _dest_locks.setdefault(dest.resolve(), threading.Lock())


def fetch(host: P2PHost, ann: ModelAnnouncement, providers: Sequence[str], dest: str | os.PathLike[str], *,
          max_bytes: int, attempts: int = 6, chunk_timeout_s: float = 30.0, timeout: float = 3600.0) -> FetchResult:
    """Fetch the artifact `ann` describes into `dest` from `providers` (peer IDs); see the module doc.

    Threads of one process fetching into the same `dest` take turns (they would share `DEST.part`); one
    that finds `dest` already holding the artifact returns without fetching.
    """
    path = Path(dest)
    with _dest_lock(path):
        if path.is_file() and path.stat().st_size == ann.size and _sha256_file(path) == ann.sha256:
            return FetchResult(path, 0, 0, 0)
        return host.call(fetch_async, host, ann, providers, path, max_bytes, attempts, chunk_timeout_s,
                         timeout=timeout)


async def fetch_async(host: P2PHost, ann: ModelAnnouncement, providers: Sequence[str], dest: Path,
                      max_bytes: int, attempts: int = 6, chunk_timeout_s: float = 30.0) -> FetchResult:
    """`fetch` from the host's trio thread."""
    from libp2p.custom_types import TProtocol
    from libp2p.peer.id import ID

    if ann.size > max_bytes:
        raise TransferError(f"artifact {ann.sha256[:12]} is {ann.size} bytes, over the {max_bytes}-byte limit; "
                            "raise max_bytes if it is expected")
    if not providers:
        raise TransferError(f"no provider for artifact {ann.sha256[:12]}; wait for a model announcement")
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    next_chunk = await trio.to_thread.run_sync(_resume, part, ann)
    result = FetchResult(dest, 0, next_chunk, 0)
    n_chunks = len(ann.manifest.chunk_sha256)
    order = list(providers)
    failures: list[str] = []
    attempt = 0
    with open(part, "ab") as out:
        while next_chunk < n_chunks:
            if attempt >= attempts:
                raise TransferError(f"gave up on {ann.sha256[:12]} after {attempts} attempts at chunk {next_chunk}/"
                                    f"{n_chunks} ({'; '.join(failures[-3:])}); {part} keeps the verified part: "
                                    "fetch again to resume")
            provider = order[0]
            order.append(order.pop(0))  # next attempt goes to the next provider (a liar waits its turn)
            attempt += 1
            if provider not in result.providers_used:
                result.providers_used.append(provider)
            try:
                stream = await host.libp2p_host.new_stream(ID.from_base58(provider), [TProtocol(FETCH_PROTOCOL)])
            except Exception as exc:  # noqa: BLE001 - try the next provider
                failures.append(f"{provider[-8:]}: {exc}")
                continue
            try:
                with trio.fail_after(chunk_timeout_s):
                    await write_frame(stream, canonical_json(
                        {"sha256": ann.sha256, "chunk_size": ann.manifest.chunk_size, "first_chunk": next_chunk}))
                    header = parse_json(await read_frame(stream, MAX_REQUEST_BYTES))
                if not isinstance(header, dict) or header.get("ok") is not True or header.get("size") != ann.size:
                    failures.append(f"{provider[-8:]} refused: {header!r:.100}")
                    continue
                while next_chunk < n_chunks:
                    with trio.fail_after(chunk_timeout_s):
                        block = await read_frame(stream, ann.manifest.chunk_size)
                    if (len(block) != _chunk_len(ann, next_chunk)
                            or hashlib.sha256(block).hexdigest() != ann.manifest.chunk_sha256[next_chunk]):
                        result.corrupt_chunks += 1
                        failures.append(f"{provider[-8:]} sent a corrupt chunk {next_chunk}")
                        log.warning("artifact %s: chunk %d from %s failed its hash; re-fetching",
                                    ann.sha256[:12], next_chunk, provider)
                        break
                    out.write(block)
                    result.bytes_fetched += len(block)
                    next_chunk += 1
            except (TransferError, trio.TooSlowError, CanonicalEncodingError) as exc:
                failures.append(f"{provider[-8:]}: {exc or 'timed out'}")
            finally:
                out.flush()
                with trio.move_on_after(2):
                    try:
                        await stream.reset() if next_chunk < n_chunks else await stream.close()
                    except Exception:  # noqa: BLE001
                        pass
        os.fsync(out.fileno())
    digest = await trio.to_thread.run_sync(_sha256_file, part)
    if digest != ann.sha256:
        part.unlink(missing_ok=True)
        raise TransferError(f"artifact {ann.sha256[:12]} assembled to {digest[:12]}: the announcement's chunk "
                            "hashes do not add up to its hash (a bad announcement); discarded")
    os.replace(part, dest)
    return result


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()
