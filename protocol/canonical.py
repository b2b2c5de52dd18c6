"""Canonical bytes: the one encoding of a value that nodes hash and sign.

`canonical_json` writes UTF-8 JSON with keys sorted, no whitespace and non-ASCII text kept as is,
so equal values always give equal bytes (whatever the dict insertion order) and the bytes re-parse
to an equal value that encodes to the same bytes again. What it accepts is deliberately narrow:

- `None`, `bool`, `str` (no lone surrogates: they have no UTF-8 form);
- `int` in the signed 64-bit range, so a peer written in any language parses it exactly;
- `float` only when finite. It is written the way Python's `repr` writes it (the shortest text that
  parses back to the same float), so `1.0` and `1` are different encodings and `-0.0` keeps its
  sign. That is stable across CPython versions and round-trips through `json.loads`, but it is not
  RFC 8785: a non-Python peer that must re-create the bytes should get integers (scaled) or strings;
- `list` and `tuple` (both become arrays), `dict` with `str` keys, at most 256 levels deep.

Bytes are refused: base64 them with `b64encode` (and read them back with `b64decode`, which accepts
only the canonical spelling). Keys are sorted by code point, as Python sorts `str`.

>>> canonical_json({"b": [1, True, None], "a": "é"})
b'{"a":"\\xc3\\xa9","b":[1,true,null]}'
>>> sha256_hex(b"")
'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855'
"""

from __future__ import annotations

import binascii
import hashlib
import json
import math
from typing import Any

from protocol.errors import CanonicalEncodingError

MAX_DEPTH = 256
"""Deepest nesting of arrays and objects `canonical_json` accepts."""

INT_MIN = -(2**63)
INT_MAX = 2**63 - 1


def canonical_json(obj: object) -> bytes:
    """The canonical UTF-8 JSON bytes of `obj` (see the module docstring for what is accepted).

    >>> canonical_json({"z": 1, "a": [1.5, "x"]})
    b'{"a":[1.5,"x"],"z":1}'
    """
    _check(obj, "$", 0)
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.encode("utf-8")


def _check(obj: object, path: str, depth: int) -> None:
    """Raise `CanonicalEncodingError` naming the first value under `obj` that has no canonical form."""
    if depth > MAX_DEPTH:
        raise CanonicalEncodingError(
            f"{path}: nested deeper than {MAX_DEPTH} levels (or the value contains a reference cycle); "
            "flatten the structure"
        )
    if obj is None or isinstance(obj, bool):
        return
    if isinstance(obj, int):
        if not INT_MIN <= obj <= INT_MAX:
            raise CanonicalEncodingError(
                f"{path}: integer {obj} is outside the signed 64-bit range; encode it as a decimal string"
            )
        return
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise CanonicalEncodingError(
                f"{path}: {obj!r} has no JSON form; send a finite number, or null for a missing value"
            )
        return
    if isinstance(obj, str):
        _check_str(obj, path)
        return
    if isinstance(obj, list | tuple):
        for i, item in enumerate(obj):
            _check(item, f"{path}[{i}]", depth + 1)
        return
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, str):
                raise CanonicalEncodingError(
                    f"{path}: object key {key!r} is a {type(key).__name__}, not a str; convert keys to str"
                )
            _check_str(key, path)
            _check(value, f"{path}.{key}", depth + 1)
        return
    if isinstance(obj, bytes | bytearray | memoryview):
        raise CanonicalEncodingError(
            f"{path}: bytes have no canonical JSON form; pass protocol.canonical.b64encode(data) instead"
        )
    raise CanonicalEncodingError(
        f"{path}: a {type(obj).__name__} has no canonical JSON form; convert it to "
        "None, bool, int, float, str, list or dict first"
    )


def _check_str(text: str, path: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise CanonicalEncodingError(
            f"{path}: string holds a lone surrogate at index {exc.start}, which has no UTF-8 form; "
            "fix the text's decoding upstream"
        ) from None


def parse_json(data: bytes | str) -> Any:
    """Parse JSON strictly: UTF-8 only, no duplicate keys, no NaN/Infinity, no nesting that exhausts the stack.

    It does not require canonical form; callers that do re-encode and compare.

    >>> parse_json(b'{"a": [1, 2.5, null]}')
    {'a': [1, 2.5, None]}
    """
    if isinstance(data, bytes | bytearray):
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CanonicalEncodingError(
                f"not UTF-8 (bad byte at offset {exc.start}); send UTF-8 encoded JSON"
            ) from None
    elif isinstance(data, str):
        text = data
    else:
        raise CanonicalEncodingError(f"parse_json takes bytes or str, not {type(data).__name__}")
    try:
        return json.loads(text, object_pairs_hook=_object_without_duplicates, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise CanonicalEncodingError(f"invalid JSON: {exc}; send the bytes a JSON encoder produced") from None
    except RecursionError:
        raise CanonicalEncodingError(f"JSON nested too deeply; keep it under {MAX_DEPTH} levels") from None


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise CanonicalEncodingError(f"JSON object repeats the key {key!r}; send each key once")
        obj[key] = value
    return obj


def _reject_constant(name: str) -> Any:
    raise CanonicalEncodingError(
        f"JSON holds {name}, which is not standard JSON; send a finite number or null"
    )


def sha256_hex(data: bytes) -> str:
    """The SHA-256 of `data` as 64 lowercase hex characters.

    >>> sha256_hex(b"abc")[:16]
    'ba7816bf8f01cfea'
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CanonicalEncodingError(
            f"sha256_hex takes bytes, not {type(data).__name__}; encode text with .encode('utf-8') first"
        )
    return hashlib.sha256(data).hexdigest()


def b64encode(data: bytes) -> str:
    """Standard base64 (RFC 4648 section 4, `+/` alphabet, `=` padding) of `data`, as str.

    >>> b64encode(b"hi")
    'aGk='
    """
    return binascii.b2a_base64(data, newline=False).decode("ascii")


def b64decode(text: str) -> bytes:
    """Decode standard padded base64, accepting only the one canonical spelling `b64encode` gives.

    >>> b64decode("aGk=")
    b'hi'
    """
    if not isinstance(text, str):
        raise CanonicalEncodingError(f"b64decode takes str, not {type(text).__name__}")
    try:
        data = binascii.a2b_base64(text.encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise CanonicalEncodingError(
            f"invalid base64 ({exc}); send standard padded base64 (RFC 4648, '+/' alphabet)"
        ) from None
    if b64encode(data) != text:
        raise CanonicalEncodingError(
            "base64 is not in canonical form (non-zero padding bits); re-encode the bytes with standard base64"
        )
    return data
