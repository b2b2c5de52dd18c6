"""Signed envelopes: a genuine envelope verifies once; every kind of tampering gets its own exception."""

from __future__ import annotations

import dataclasses
import doctest
import json
import threading
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.canonical import b64encode, canonical_json, sha256_hex
from protocol.envelope import (
    DOMAIN_SEPARATOR,
    ENVELOPE_VERSION,
    HEADER_FIELDS,
    WIRE_FIELDS,
    Envelope,
    Verifier,
    sign_envelope,
)
from protocol.errors import (
    BadSignature,
    EnvelopeError,
    InvalidPublicKey,
    MalformedEnvelope,
    PayloadTampered,
    ProtocolError,
    ReplayedNonce,
    StaleEnvelope,
    UnknownSender,
    UnsupportedVersion,
    WrongSender,
    WrongType,
)
from protocol.identity import Identity, verify_signature

pytestmark = pytest.mark.e2e  # the end-to-end fault suite: make e2e

NOW = 1_700_000_000_000  # ms
ALICE = Identity.from_seed(bytes([1]) * 32)
BOB = Identity.from_seed(bytes([2]) * 32)
MALLORY = Identity.from_seed(bytes([3]) * 32)
PAYLOAD = canonical_json({"round": 7, "update_sha256": "ab" * 32})
GENUINE = sign_envelope(ALICE, "federation/update", PAYLOAD, now_ms=NOW)


def _resign(env: Envelope, signer: Identity, **changes: Any) -> Envelope:
    """`env` with `changes`, freshly signed by `signer` (whatever sender it names)."""
    changed = dataclasses.replace(env, **changes)
    return dataclasses.replace(changed, signature=signer.sign(changed.signing_input()).hex())


def _wire(**changes: Any) -> bytes:
    obj = GENUINE.to_wire_dict()
    obj.update(changes)
    return canonical_json({k: v for k, v in obj.items() if v is not None})


# --- the genuine path ---------------------------------------------------------------------------


def test_round_trip_through_the_wire() -> None:
    data = GENUINE.to_bytes()
    env = Envelope.from_bytes(data)
    assert env == GENUINE
    assert Envelope.from_json(GENUINE.to_json()) == GENUINE
    assert Verifier({ALICE.public_key_hex}).verify(env, now_ms=NOW) == PAYLOAD


def test_envelope_fields() -> None:
    env = GENUINE
    assert env.version == ENVELOPE_VERSION == 1
    assert env.sender == ALICE.public_key_hex
    assert env.timestamp_ms == NOW
    assert len(env.nonce) == 32 and int(env.nonce, 16) >= 0
    assert env.payload_sha256 == sha256_hex(PAYLOAD)
    assert len(bytes.fromhex(env.signature)) == 64
    assert env.sender_key == ALICE.public_key
    other = sign_envelope(ALICE, "federation/update", PAYLOAD, now_ms=NOW)
    assert other.nonce != env.nonce  # fresh random nonce each time


def test_signature_covers_domain_separator_and_canonical_header() -> None:
    header = {k: v for k, v in GENUINE.to_wire_dict().items() if k in HEADER_FIELDS}
    assert set(header) == {"version", "type", "sender", "timestamp_ms", "nonce", "payload_sha256"}
    expected = b"rewardnode/envelope/v1\n" + canonical_json(header)
    assert GENUINE.signing_input() == expected
    assert DOMAIN_SEPARATOR == b"rewardnode/envelope/v1\n"
    sig = bytes.fromhex(GENUINE.signature)
    assert verify_signature(ALICE.public_key, expected, sig)
    assert not verify_signature(ALICE.public_key, canonical_json(header), sig)  # no separator, no match


def test_wire_form_is_canonical_json_with_base64_payload() -> None:
    obj = json.loads(GENUINE.to_bytes())
    assert set(obj) == WIRE_FIELDS
    assert obj["payload"] == b64encode(PAYLOAD)
    assert canonical_json(obj) == GENUINE.to_bytes()
    assert "payload" not in repr(GENUINE).replace("payload_sha256", "")


def test_verify_bytes_returns_the_envelope() -> None:
    env = Verifier().verify_bytes(GENUINE.to_bytes(), expected_type="federation/update", now_ms=NOW)
    assert env == GENUINE and env.payload == PAYLOAD


def test_expected_sender_and_allowlist_accept_any_key_spelling() -> None:
    import base64

    b64 = base64.b64encode(ALICE.public_key_bytes).decode()
    verifier = Verifier([b64, BOB.public_key])
    assert verifier.allowlist == frozenset({ALICE.public_key_hex, BOB.public_key_hex})
    assert verifier.verify(GENUINE, expected_sender=ALICE.public_key_hex.upper(), now_ms=NOW) == PAYLOAD


def test_empty_payload_and_large_payload() -> None:
    for payload in (b"", bytes(range(256)) * 1000):
        env = sign_envelope(BOB, "x", payload, now_ms=NOW)
        assert Verifier().verify(Envelope.from_bytes(env.to_bytes()), now_ms=NOW) == payload


@given(
    payload=st.binary(max_size=300), msg_type=st.from_regex(r"[a-z0-9][a-z0-9._:/-]{0,20}", fullmatch=True)
)
@settings(max_examples=50, deadline=None)
def test_any_payload_and_type_round_trip(payload: bytes, msg_type: str) -> None:
    env = sign_envelope(BOB, msg_type, payload, now_ms=NOW)
    got = Verifier().verify_bytes(
        env.to_bytes(), expected_type=msg_type, expected_sender=BOB.public_key, now_ms=NOW
    )
    assert got.payload == payload


# --- each tampering has its own exception -------------------------------------------------------


def _other_signer_claiming_alice() -> Envelope:
    return _resign(GENUINE, MALLORY)  # names ALICE as sender, signed by MALLORY


CASES: list[tuple[str, Callable[[], Envelope], dict[str, Any], type[EnvelopeError]]] = [
    (
        "flip a payload byte",
        lambda: dataclasses.replace(GENUINE, payload=b"X" + PAYLOAD[1:]),
        {},
        PayloadTampered,
    ),
    ("truncate the payload", lambda: dataclasses.replace(GENUINE, payload=PAYLOAD[:-1]), {}, PayloadTampered),
    ("change the type", lambda: dataclasses.replace(GENUINE, type="federation/other"), {}, BadSignature),
    ("change the timestamp", lambda: dataclasses.replace(GENUINE, timestamp_ms=NOW + 1), {}, BadSignature),
    ("change the nonce", lambda: dataclasses.replace(GENUINE, nonce="0" * 32), {}, BadSignature),
    (
        "swap payload and its hash",
        lambda: dataclasses.replace(GENUINE, payload=b"evil", payload_sha256=sha256_hex(b"evil")),
        {},
        BadSignature,
    ),
    (
        "swap sender to another key",
        lambda: dataclasses.replace(GENUINE, sender=BOB.public_key_hex),
        {},
        BadSignature,
    ),
    ("key B signs claiming key A", _other_signer_claiming_alice, {}, BadSignature),
    (
        "flip a signature bit",
        lambda: dataclasses.replace(
            GENUINE, signature=("1" if GENUINE.signature[0] == "0" else "0") + GENUINE.signature[1:]
        ),
        {},
        BadSignature,
    ),
    ("wrong expected type", lambda: GENUINE, {"expected_type": "federation/reply"}, WrongType),
    ("wrong expected sender", lambda: GENUINE, {"expected_sender": BOB.public_key_hex}, WrongSender),
    ("unsupported version", lambda: _resign(GENUINE, ALICE, version=2), {}, UnsupportedVersion),
    ("stale", lambda: _resign(GENUINE, ALICE, timestamp_ms=NOW - 300_001), {}, StaleEnvelope),
    ("future", lambda: _resign(GENUINE, ALICE, timestamp_ms=NOW + 30_001), {}, StaleEnvelope),
]


@pytest.mark.parametrize(("name", "make", "kwargs", "error"), CASES, ids=[c[0] for c in CASES])
def test_tampering_is_rejected_with_its_own_exception(
    name: str, make: Callable[[], Envelope], kwargs: dict[str, Any], error: type[EnvelopeError]
) -> None:
    verifier = Verifier({ALICE.public_key_hex, BOB.public_key_hex})
    with pytest.raises(EnvelopeError) as excinfo:
        verifier.verify(make(), now_ms=NOW, **kwargs)
    assert type(excinfo.value) is error, f"{name}: {excinfo.value!r}"
    assert verifier.nonces_remembered == 0
    assert verifier.verify(GENUINE, now_ms=NOW) == PAYLOAD  # the rejected one used up nothing


def test_tampering_survives_the_wire() -> None:
    forged = dataclasses.replace(GENUINE, type="federation/other")
    with pytest.raises(BadSignature, match="header was altered"):
        Verifier().verify_bytes(forged.to_bytes(), now_ms=NOW)


def test_unknown_sender_with_allowlist() -> None:
    with pytest.raises(UnknownSender, match="allowlist") as excinfo:
        Verifier({BOB.public_key_hex}).verify(GENUINE, now_ms=NOW)
    assert ALICE.public_key_hex in str(excinfo.value)
    with pytest.raises(UnknownSender):
        Verifier(set()).verify(GENUINE, now_ms=NOW)  # empty allowlist: no one
    assert Verifier(None).verify(GENUINE, now_ms=NOW) == PAYLOAD  # None: anyone correctly signed


def test_age_window_boundaries() -> None:
    verifier = Verifier(max_age_s=300, max_skew_s=30)

    def at(ms: int) -> Envelope:
        return sign_envelope(ALICE, "x", b"", now_ms=ms)

    assert verifier.verify(at(NOW - 300_000), now_ms=NOW) == b""
    assert verifier.verify(at(NOW + 30_000), now_ms=NOW) == b""
    with pytest.raises(StaleEnvelope, match="old"):
        verifier.verify(at(NOW - 300_001), now_ms=NOW)
    with pytest.raises(StaleEnvelope, match="future"):
        verifier.verify(at(NOW + 30_001), now_ms=NOW)


def test_default_clock_is_used_when_now_is_not_given() -> None:
    assert Verifier(clock_ms=lambda: NOW + 1000).verify(GENUINE) == PAYLOAD
    with pytest.raises(StaleEnvelope):
        Verifier().verify(GENUINE)  # NOW is in 2023: stale against the real clock
    fresh = sign_envelope(ALICE, "x", b"now")
    assert Verifier().verify(fresh) == b"now"


# --- replay -------------------------------------------------------------------------------------


def test_replay_of_a_valid_envelope() -> None:
    verifier = Verifier()
    assert verifier.verify(GENUINE, now_ms=NOW) == PAYLOAD
    with pytest.raises(ReplayedNonce, match="already accepted"):
        verifier.verify(GENUINE, now_ms=NOW + 1000)
    with pytest.raises(ReplayedNonce):
        verifier.verify_bytes(GENUINE.to_bytes(), now_ms=NOW + 2000)


def test_forged_envelope_does_not_burn_the_nonce() -> None:
    verifier = Verifier()
    forged_header = dataclasses.replace(GENUINE, type="federation/other")
    forged_payload = dataclasses.replace(GENUINE, payload=b"evil")
    claimed = _other_signer_claiming_alice()
    for forged, error in (
        (forged_header, BadSignature),
        (forged_payload, PayloadTampered),
        (claimed, BadSignature),
    ):
        with pytest.raises(error):
            verifier.verify(forged, now_ms=NOW)
    assert verifier.nonces_remembered == 0
    assert verifier.verify(GENUINE, now_ms=NOW) == PAYLOAD
    assert verifier.nonces_remembered == 1


def test_nonces_are_per_sender() -> None:
    from_bob = _resign(GENUINE, BOB, sender=BOB.public_key_hex)  # same nonce, other sender
    verifier = Verifier()
    assert verifier.verify(GENUINE, now_ms=NOW) == PAYLOAD
    assert verifier.verify(from_bob, now_ms=NOW) == PAYLOAD


def test_nonces_are_forgotten_once_stale_and_replays_stay_rejected() -> None:
    verifier = Verifier(max_age_s=10, max_skew_s=1)
    first = _resign(GENUINE, ALICE, timestamp_ms=NOW)
    verifier.verify(first, now_ms=NOW)
    later = sign_envelope(ALICE, "x", b"", now_ms=NOW + 20_000)
    verifier.verify(later, now_ms=NOW + 20_000)  # recording evicts `first`, now stale
    assert verifier.nonces_remembered == 1
    with pytest.raises(StaleEnvelope):
        verifier.verify(first, now_ms=NOW + 20_000)
    with pytest.raises(StaleEnvelope, match="replay horizon"):
        verifier.verify(first, now_ms=NOW + 5_000)  # the clock moved back: still no replay


def test_nonce_cache_has_a_hard_cap_without_opening_a_replay_hole() -> None:
    verifier = Verifier(max_nonces=3)
    envs = [sign_envelope(ALICE, "x", bytes([i]), now_ms=NOW - 1000 * (5 - i)) for i in range(5)]
    for env in envs:
        verifier.verify(env, now_ms=NOW)
    assert verifier.nonces_remembered == 3
    for env in envs[:2]:  # their nonces were dropped to make room...
        with pytest.raises(StaleEnvelope, match="replay horizon"):
            verifier.verify(env, now_ms=NOW)  # ...so they are refused as too old, never accepted twice
    for env in envs[2:]:
        with pytest.raises(ReplayedNonce):
            verifier.verify(env, now_ms=NOW)
    older = sign_envelope(ALICE, "x", b"old", now_ms=NOW - 10_000)  # would be evicted first
    with pytest.raises(StaleEnvelope):
        verifier.verify(older, now_ms=NOW)
    newer = sign_envelope(ALICE, "x", b"new", now_ms=NOW)
    assert verifier.verify(newer, now_ms=NOW) == b"new"
    assert verifier.nonces_remembered == 3


def test_concurrent_verification_accepts_exactly_once() -> None:
    verifier = Verifier()
    results: list[str] = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        try:
            verifier.verify(GENUINE, now_ms=NOW)
            results.append("ok")
        except ReplayedNonce:
            results.append("replay")

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["ok"] + ["replay"] * 7


# --- malformed bytes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"{not json", "not valid JSON"),
        (b"", "not valid JSON"),
        (b"[]", "JSON object"),
        (b'"envelope"', "JSON object"),
        (_wire(nonce=None), "missing field(s) nonce"),
        (_wire(signature=None, payload=None), "missing field(s) payload, signature"),
        (_wire(version=None), "no 'version' field"),
        (_wire(extra=1), "unknown field(s) 'extra'"),
        (_wire(timestamp_ms=NOW / 1000), "timestamp_ms"),
        (_wire(timestamp_ms=str(NOW)), "timestamp_ms"),
        (_wire(timestamp_ms=-1), "timestamp_ms"),
        (_wire(version="1"), "version"),
        (_wire(version=True), "version"),
        (_wire(sender=GENUINE.sender.upper()), "sender must be 64 lowercase hex"),
        (_wire(sender=GENUINE.sender[:-2]), "sender must be 64 lowercase hex"),
        (_wire(nonce="zz" * 16), "nonce"),
        (_wire(signature=GENUINE.signature[:-2]), "signature"),
        (_wire(payload_sha256=None, extra=None), "missing field(s) payload_sha256"),
        (_wire(type=""), "type must be"),
        (_wire(type="has space"), "type must be"),
        (_wire(type=7), "type must be"),
        (_wire(payload=5), "payload must be a base64 string"),
        (_wire(payload="not base64!"), "invalid base64"),
        (_wire(payload="QR=="), "canonical form"),
        (GENUINE.to_bytes().replace(b",", b", ", 1), "not in canonical form"),
        (b" " + GENUINE.to_bytes(), "not in canonical form"),
        (GENUINE.to_bytes()[:-1] + b',"nonce":"' + GENUINE.nonce.encode() + b'"}', "repeats the key"),
        (b"\xff" + GENUINE.to_bytes(), "UTF-8"),
        (b"[" * 50_000, "nested too deeply"),
    ],
)
def test_malformed_bytes_say_what_is_wrong(data: bytes, words: str) -> None:
    with pytest.raises(MalformedEnvelope) as excinfo:
        Envelope.from_bytes(data)
    assert words in str(excinfo.value)


def test_size_limit_is_checked_before_parsing() -> None:
    data = GENUINE.to_bytes()
    with pytest.raises(MalformedEnvelope, match="over the 100-byte limit"):
        Envelope.from_bytes(data, max_bytes=100)
    assert Envelope.from_bytes(data, max_bytes=len(data)) == GENUINE
    with pytest.raises(MalformedEnvelope, match="limit"):
        Verifier().verify_bytes(b" " * (2**20 + 1), now_ms=NOW)


def test_unsupported_version_on_the_wire() -> None:
    with pytest.raises(UnsupportedVersion, match="upgrade"):
        Envelope.from_bytes(canonical_json({"version": 2, "anything": "else"}))


def test_bad_arguments_raise_value_error() -> None:
    with pytest.raises(ValueError, match="msg_type"):
        sign_envelope(ALICE, "bad type", b"")
    with pytest.raises(ValueError, match="bytes"):
        sign_envelope(ALICE, "x", "text")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Identity"):
        sign_envelope("alice", "x", b"")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_nonces"):
        Verifier(max_nonces=0)
    with pytest.raises(ValueError, match="max_age_s"):
        Verifier(max_age_s=-1)
    with pytest.raises(ValueError, match="wrap a single key"):
        Verifier(ALICE.public_key_hex)
    with pytest.raises(InvalidPublicKey):
        Verifier({"not-a-key"})
    with pytest.raises(MalformedEnvelope):
        dataclasses.replace(GENUINE, timestamp_ms=1.5)  # type: ignore[arg-type]


def test_all_envelope_errors_share_the_base_classes() -> None:
    for error in (
        MalformedEnvelope,
        UnsupportedVersion,
        PayloadTampered,
        BadSignature,
        WrongSender,
        UnknownSender,
        StaleEnvelope,
        ReplayedNonce,
        WrongType,
    ):
        assert issubclass(error, EnvelopeError) and issubclass(error, ProtocolError)
    assert len({c[3] for c in CASES} | {MalformedEnvelope, UnknownSender, ReplayedNonce}) == 9


# --- no byte of the wire form can change unnoticed ----------------------------------------------

WIRE = GENUINE.to_bytes()


def _reject_or_identical(data: bytes) -> None:
    try:
        env = Envelope.from_bytes(data)
        Verifier({ALICE.public_key_hex}).verify(env, now_ms=NOW)
    except EnvelopeError:
        return
    assert env == GENUINE and data == WIRE


@given(position=st.integers(0, len(WIRE) - 1), value=st.integers(0, 255))
@settings(max_examples=400, deadline=None)
def test_any_single_byte_mutation_is_rejected(position: int, value: int) -> None:
    mutated = WIRE[:position] + bytes([value]) + WIRE[position + 1 :]
    _reject_or_identical(mutated)


@given(position=st.integers(0, len(WIRE) - 1), bit=st.integers(0, 7))
@settings(max_examples=200, deadline=None)
def test_any_single_bit_flip_is_rejected(position: int, bit: int) -> None:
    mutated = WIRE[:position] + bytes([WIRE[position] ^ (1 << bit)]) + WIRE[position + 1 :]
    with pytest.raises(EnvelopeError):
        _verify_fresh(mutated)


def _verify_fresh(data: bytes) -> None:
    Verifier({ALICE.public_key_hex}).verify(Envelope.from_bytes(data), now_ms=NOW)


@given(position=st.integers(0, len(WIRE)), value=st.integers(0, 255))
@settings(max_examples=100, deadline=None)
def test_any_inserted_or_deleted_byte_is_rejected(position: int, value: int) -> None:
    with pytest.raises(EnvelopeError):
        _verify_fresh(WIRE[:position] + bytes([value]) + WIRE[position:])
    if position < len(WIRE):
        with pytest.raises(EnvelopeError):
            _verify_fresh(WIRE[:position] + WIRE[position + 1 :])


def test_docstring_examples_hold() -> None:
    import protocol.envelope

    assert doctest.testmod(protocol.envelope).failed == 0
