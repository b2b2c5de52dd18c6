"""Canonical JSON: equal values give equal bytes, and only values with one spelling are accepted."""

from __future__ import annotations

import doctest
import hashlib
import json
import math
import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.canonical import (
    INT_MAX,
    INT_MIN,
    MAX_DEPTH,
    b64decode,
    b64encode,
    canonical_json,
    parse_json,
    sha256_hex,
)
from protocol.errors import CanonicalEncodingError, ProtocolError

scalars = (
    st.none()
    | st.booleans()
    | st.integers(INT_MIN, INT_MAX)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=25,
)


def _reordered(value: Any, rng: random.Random) -> Any:
    """The same value with every dict rebuilt in a shuffled insertion order."""
    if isinstance(value, dict):
        items = list(value.items())
        rng.shuffle(items)
        return {k: _reordered(v, rng) for k, v in items}
    if isinstance(value, list):
        return [_reordered(v, rng) for v in value]
    return value


# --- stability ----------------------------------------------------------------------------------


def test_exact_bytes_of_a_known_value() -> None:
    value = {"b": [1, True, None, 2.5, -0.0], "a": "é€😀", "c": {"y": "", "x": 0}}
    assert canonical_json(value) == '{"a":"é€😀","b":[1,true,null,2.5,-0.0],"c":{"x":0,"y":""}}'.encode()


@given(json_values, st.randoms(use_true_random=False))
def test_bytes_do_not_depend_on_key_insertion_order(value: Any, rng: random.Random) -> None:
    assert canonical_json(_reordered(value, rng)) == canonical_json(value)


@given(json_values)
def test_bytes_reparse_to_the_same_bytes(value: Any) -> None:
    encoded = canonical_json(value)
    assert canonical_json(parse_json(encoded)) == encoded
    assert canonical_json(json.loads(encoded)) == encoded


@given(json_values)
def test_encoding_is_compact_sorted_utf8(value: Any) -> None:
    expected = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    assert canonical_json(value) == expected


def test_tuples_encode_as_arrays() -> None:
    assert canonical_json((1, ("a",))) == canonical_json([1, ["a"]]) == b'[1,["a"]]'


def test_int_and_float_are_distinct_and_negative_zero_keeps_its_sign() -> None:
    assert canonical_json(1) == b"1"
    assert canonical_json(1.0) == b"1.0"
    assert canonical_json(-0.0) == b"-0.0"
    assert math.copysign(1.0, parse_json(canonical_json(-0.0))) == -1.0


def test_int_range_boundaries() -> None:
    assert canonical_json([INT_MIN, INT_MAX]) == f"[{INT_MIN},{INT_MAX}]".encode()


# --- what has no canonical form -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (float("nan"), "finite"),
        (float("inf"), "finite"),
        ({"a": [float("-inf")]}, "$.a[0]"),
        (b"raw", "b64encode"),
        (bytearray(b"raw"), "b64encode"),
        ({1: "x"}, "not a str"),
        ({("a",): "x"}, "not a str"),
        ({"x"}, "set"),
        (INT_MAX + 1, "64-bit"),
        (INT_MIN - 1, "64-bit"),
        ("\ud800", "surrogate"),
        ({"\udfff": 1}, "surrogate"),
        (object(), "object"),
    ],
)
def test_rejects_values_without_a_canonical_form(value: object, words: str) -> None:
    with pytest.raises(CanonicalEncodingError) as excinfo:
        canonical_json(value)
    assert words in str(excinfo.value)


def test_rejects_too_deep_nesting_and_cycles() -> None:
    deep: list[Any] = []
    for _ in range(MAX_DEPTH + 1):
        deep = [deep]
    with pytest.raises(CanonicalEncodingError, match="deeper than"):
        canonical_json(deep)
    cycle: list[Any] = []
    cycle.append(cycle)
    with pytest.raises(CanonicalEncodingError, match="cycle"):
        canonical_json(cycle)


def test_errors_are_value_errors_and_protocol_errors() -> None:
    with pytest.raises(ValueError):
        canonical_json(float("nan"))
    with pytest.raises(ProtocolError):
        canonical_json(b"")


# --- strict parsing -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b'{"a":1,"a":2}', "repeats the key"),
        (b"[NaN]", "NaN"),
        (b"[Infinity]", "Infinity"),
        (b"[-Infinity]", "Infinity"),
        (b'"\xff"', "not UTF-8"),
        (b"{", "invalid JSON"),
        (b"[1] x", "invalid JSON"),
        (b"[" * 100_000, "nested too deeply"),
    ],
)
def test_parse_json_rejects(data: bytes, words: str) -> None:
    with pytest.raises(CanonicalEncodingError) as excinfo:
        parse_json(data)
    assert words in str(excinfo.value)


def test_parse_json_accepts_str_and_bytes() -> None:
    assert parse_json('{"a":[1,2.5,null]}') == parse_json(b'{"a": [1, 2.5, null]}') == {"a": [1, 2.5, None]}


# --- hashing and base64 -------------------------------------------------------------------------


def test_sha256_hex_known_vectors() -> None:
    assert sha256_hex(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert sha256_hex(b"abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    with pytest.raises(CanonicalEncodingError, match="encode"):
        sha256_hex("abc")  # type: ignore[arg-type]


@given(st.binary(max_size=200))
def test_base64_round_trip(data: bytes) -> None:
    text = b64encode(data)
    assert b64decode(text) == data
    assert text.isascii() and "\n" not in text


@pytest.mark.parametrize("text", ["QR==", "QQ=", "QQ", "Q Q==", "QQ==\n", "QQ==QQ==", "Q-8=", "é"])
def test_base64_rejects_non_canonical_spellings(text: str) -> None:
    with pytest.raises(CanonicalEncodingError):
        b64decode(text)


def test_sha256_hex_matches_hashlib() -> None:
    assert sha256_hex(b"rewardnode") == hashlib.sha256(b"rewardnode").hexdigest()


def test_docstring_examples_hold() -> None:
    import protocol.canonical

    assert doctest.testmod(protocol.canonical).failed == 0
