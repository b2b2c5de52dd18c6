"""Canonical bytes of named float32 arrays: what contributions and manifests hash, never a pickle.

    MAGIC
    + 8-byte big-endian length of the header
    + canonical_json([{"name": ..., "shape": [...]} for each array, names sorted])
    + each array's float32 little-endian C-order bytes, in the same order

>>> import numpy as np
>>> arrays_sha256({"b": np.zeros(2, np.float32), "a": np.ones((1, 1), np.float32)})[:12]
'51e52034bd03'
>>> decode_arrays(encode_arrays({"w": np.arange(3, dtype=np.float32)}))["w"].tolist()
[0.0, 1.0, 2.0]
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

import numpy as np
from numpy.typing import NDArray

from protocol.canonical import canonical_json, parse_json, sha256_hex

MAGIC = b"rewardnode/arrays/v1\n"
DTYPE = np.dtype("<f4")

Arrays = dict[str, NDArray[np.float32]]


def _normalize(arrays: Mapping[str, NDArray[np.floating]]) -> list[tuple[str, NDArray[np.float32]]]:
    out = []
    for name in sorted(arrays):
        if not isinstance(name, str) or not name:
            raise ValueError(f"array names must be non-empty str, got {name!r}")
        a = np.asarray(arrays[name])
        if a.dtype.kind != "f":
            raise ValueError(f"array {name!r} has dtype {a.dtype}, not a float; send float32 weights")
        out.append((name, np.ascontiguousarray(a, dtype=DTYPE)))
    return out


def encode_arrays(arrays: Mapping[str, NDArray[np.floating]]) -> bytes:
    """The canonical bytes of `arrays` (converted to float32)."""
    items = _normalize(arrays)
    header = canonical_json([{"name": n, "shape": list(a.shape)} for n, a in items])
    return b"".join([MAGIC, struct.pack(">Q", len(header)), header, *(a.tobytes() for _, a in items)])


def arrays_sha256(arrays: Mapping[str, NDArray[np.floating]]) -> str:
    """SHA-256 hex of `encode_arrays(arrays)`."""
    return sha256_hex(encode_arrays(arrays))


def decode_arrays(data: bytes) -> Arrays:
    """Parse `encode_arrays` output back to named float32 arrays; rejects anything non-canonical."""
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + 8:
        raise ValueError("not a rewardnode array file (bad magic); write it with encode_arrays")
    pos = len(MAGIC)
    (n_header,) = struct.unpack(">Q", data[pos: pos + 8])
    pos += 8
    specs = parse_json(data[pos: pos + n_header])
    pos += n_header
    if not isinstance(specs, list):
        raise ValueError("array header is not a list; the file is damaged")
    out: Arrays = {}
    for spec in specs:
        name, shape = spec["name"], tuple(int(s) for s in spec["shape"])
        size = int(np.prod(shape)) * DTYPE.itemsize if shape else DTYPE.itemsize
        out[name] = np.frombuffer(data[pos: pos + size], dtype=DTYPE).reshape(shape).copy()
        pos += size
    if pos != len(data) or encode_arrays(out) != data:
        raise ValueError("array file is truncated, has trailing bytes or is not canonical; re-write it")
    return out


def shapes_of(arrays: Mapping[str, NDArray[np.floating]]) -> dict[str, list[int]]:
    """name -> shape, as plain lists (what an agreement or a check compares)."""
    return {n: list(np.asarray(a).shape) for n, a in arrays.items()}
