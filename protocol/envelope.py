"""Signed envelopes: every message a node sends is one, and every message it receives is checked as one.

An envelope is a header (version, type, sender key, timestamp, nonce, SHA-256 of the payload), an
Ed25519 signature and the payload bytes. The signature covers

    b"rewardnode/envelope/v1\\n" + canonical_json(header)

so it binds the payload through its hash, and the domain separator keeps an envelope signature from
ever being valid for any other message the same key signs. Encodings:

- `timestamp_ms`: integer milliseconds since the Unix epoch (UTC), no float rounding anywhere;
- `sender`: the raw 32-byte Ed25519 public key as 64 lowercase hex characters;
- `nonce`: 16 random bytes as 32 lowercase hex characters;
- `payload_sha256`: 64 lowercase hex characters; `signature`: 64 bytes as 128 lowercase hex characters;
- on the wire: `canonical_json` of all eight fields, `payload` as standard padded base64.

`Envelope.from_bytes` accepts only that exact canonical form, so one envelope has one byte string
and no byte of it can change without the envelope being rejected.

>>> from protocol.identity import Identity
>>> alice = Identity.from_seed(bytes(32))
>>> env = sign_envelope(alice, "demo/hello", b"hi", now_ms=1_700_000_000_000)
>>> Verifier({alice.public_key_hex}).verify(Envelope.from_bytes(env.to_bytes()), now_ms=1_700_000_001_000)
b'hi'
"""

from __future__ import annotations

import heapq
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from protocol.canonical import b64decode, b64encode, canonical_json, parse_json, sha256_hex
from protocol.errors import (
    BadSignature,
    CanonicalEncodingError,
    MalformedEnvelope,
    PayloadTampered,
    ReplayedNonce,
    StaleEnvelope,
    UnknownSender,
    UnsupportedVersion,
    WrongSender,
    WrongType,
)
from protocol.identity import Identity, PublicKey

ENVELOPE_VERSION = 1
"""The version `sign_envelope` writes."""

SUPPORTED_VERSIONS = frozenset({ENVELOPE_VERSION})
"""The versions `Verifier` and `Envelope.from_bytes` accept."""

DOMAIN_SEPARATOR = b"rewardnode/envelope/v1\n"
"""Prefix of every signed header; no other rewardnode signature starts with it."""

DEFAULT_MAX_ENVELOPE_BYTES = 1 << 20
"""Largest wire envelope `from_bytes` parses by default (1 MiB, gossipsub's default message cap)."""

NONCE_BYTES = 16
MAX_TIMESTAMP_MS = 2**53 - 1
"""Timestamps stay in the range every JSON parser reads exactly."""

# Wire keys (the JSON field names), kept as constants so no string is spelled twice.
WIRE_VERSION = "version"
WIRE_TYPE = "type"
WIRE_SENDER = "sender"
WIRE_TIMESTAMP_MS = "timestamp_ms"
WIRE_NONCE = "nonce"
WIRE_PAYLOAD_SHA256 = "payload_sha256"
WIRE_SIGNATURE = "signature"
WIRE_PAYLOAD = "payload"

HEADER_FIELDS = (WIRE_VERSION, WIRE_TYPE, WIRE_SENDER, WIRE_TIMESTAMP_MS, WIRE_NONCE, WIRE_PAYLOAD_SHA256)
"""The fields the signature covers (the payload through its hash)."""

WIRE_FIELDS = frozenset((*HEADER_FIELDS, WIRE_SIGNATURE, WIRE_PAYLOAD))

_TYPE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}")
_HEX_RE = re.compile(r"[0-9a-f]*")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_hex(name: str, value: object, n_chars: int) -> None:
    if not isinstance(value, str) or len(value) != n_chars or not _HEX_RE.fullmatch(value):
        raise MalformedEnvelope(
            f"{name} must be {n_chars} lowercase hex characters, got {_show(value)}; "
            "re-create the envelope with sign_envelope"
        )


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _who(sender: str) -> str:
    """A short, readable name for a sender key in error messages."""
    try:
        return PublicKey(bytes.fromhex(sender)).short_fingerprint
    except ValueError:
        return _show(sender)


def _signing_input(
    version: int, type_: str, sender: str, timestamp_ms: int, nonce: str, payload_sha256: str
) -> bytes:
    header = {
        WIRE_VERSION: version,
        WIRE_TYPE: type_,
        WIRE_SENDER: sender,
        WIRE_TIMESTAMP_MS: timestamp_ms,
        WIRE_NONCE: nonce,
        WIRE_PAYLOAD_SHA256: payload_sha256,
    }
    return DOMAIN_SEPARATOR + canonical_json(header)


def _check_type(value: object, what: str) -> None:
    if not isinstance(value, str) or not _TYPE_RE.fullmatch(value):
        raise MalformedEnvelope(
            f"{what} must be 1-128 characters of [A-Za-z0-9._:/-] starting with a letter or digit "
            f"(e.g. 'federation/update'), got {_show(value)}"
        )


@dataclass(frozen=True)
class Envelope:
    """One signed message. Fields are checked for shape on construction; `Verifier` checks the rest."""

    version: int
    """Envelope format version; this code writes `ENVELOPE_VERSION`."""
    type: str
    """What the payload is, e.g. `federation/update`; 1-128 chars of `[A-Za-z0-9._:/-]`."""
    sender: str
    """The signer's Ed25519 public key, 64 lowercase hex characters."""
    timestamp_ms: int
    """When it was signed, integer milliseconds since the Unix epoch."""
    nonce: str
    """16 random bytes, 32 lowercase hex characters; unique per sender within the replay window."""
    payload_sha256: str
    """SHA-256 of `payload`, 64 lowercase hex characters."""
    signature: str
    """Ed25519 signature of `signing_input()`, 128 lowercase hex characters."""
    payload: bytes = field(repr=False)
    """The message body, opaque to the envelope (usually canonical JSON of its own)."""

    def __post_init__(self) -> None:
        if not _is_int(self.version) or not 0 <= self.version < 2**31:
            raise MalformedEnvelope(f"version must be a non-negative integer, got {_show(self.version)}")
        _check_type(self.type, "type")
        _check_hex("sender", self.sender, 2 * 32)
        if not _is_int(self.timestamp_ms) or not 0 <= self.timestamp_ms <= MAX_TIMESTAMP_MS:
            raise MalformedEnvelope(
                f"timestamp_ms must be integer milliseconds since the epoch in [0, 2**53), "
                f"got {_show(self.timestamp_ms)}; seconds or floats are not accepted"
            )
        _check_hex("nonce", self.nonce, 2 * NONCE_BYTES)
        _check_hex("payload_sha256", self.payload_sha256, 64)
        _check_hex("signature", self.signature, 2 * 64)
        if not isinstance(self.payload, bytes):
            raise MalformedEnvelope(
                f"payload must be bytes, not {type(self.payload).__name__}; encode it (canonical_json) first"
            )

    # --- signed bytes ---------------------------------------------------------------------------

    def signing_input(self) -> bytes:
        """The exact bytes the signature covers: domain separator + canonical JSON of the header."""
        return _signing_input(
            self.version, self.type, self.sender, self.timestamp_ms, self.nonce, self.payload_sha256
        )

    @property
    def sender_key(self) -> PublicKey:
        """The sender as a `PublicKey`."""
        return PublicKey(bytes.fromhex(self.sender))

    # --- wire form ------------------------------------------------------------------------------

    def to_wire_dict(self) -> dict[str, Any]:
        """The eight wire fields, payload base64-encoded (what `to_bytes` serializes)."""
        return {
            WIRE_VERSION: self.version,
            WIRE_TYPE: self.type,
            WIRE_SENDER: self.sender,
            WIRE_TIMESTAMP_MS: self.timestamp_ms,
            WIRE_NONCE: self.nonce,
            WIRE_PAYLOAD_SHA256: self.payload_sha256,
            WIRE_SIGNATURE: self.signature,
            WIRE_PAYLOAD: b64encode(self.payload),
        }

    def to_bytes(self) -> bytes:
        """The canonical wire bytes (canonical JSON, UTF-8)."""
        return canonical_json(self.to_wire_dict())

    def to_json(self) -> str:
        """The canonical wire form as text (pure ASCII, since every field is)."""
        return self.to_bytes().decode("utf-8")

    @classmethod
    def from_json(cls, text: str, *, max_bytes: int = DEFAULT_MAX_ENVELOPE_BYTES) -> Envelope:
        """Parse `to_json` output; see `from_bytes`."""
        if not isinstance(text, str):
            raise MalformedEnvelope(
                f"from_json takes str, not {type(text).__name__}; use from_bytes for bytes"
            )
        return cls.from_bytes(text.encode("utf-8", errors="surrogatepass"), max_bytes=max_bytes)

    @classmethod
    def from_bytes(cls, data: bytes, *, max_bytes: int = DEFAULT_MAX_ENVELOPE_BYTES) -> Envelope:
        """Parse canonical wire bytes. Shape only: the signature, age and nonce are `Verifier`'s job.

        Raises `MalformedEnvelope` (saying what is wrong) for anything but the exact canonical
        encoding of a well-formed envelope, and `UnsupportedVersion` for another version.
        """
        if not isinstance(data, bytes | bytearray | memoryview):
            raise MalformedEnvelope(f"from_bytes takes bytes, not {type(data).__name__}")
        if len(data) > max_bytes:
            raise MalformedEnvelope(
                f"envelope is {len(data)} bytes, over the {max_bytes}-byte limit; send large payloads "
                "another way (or raise max_bytes if this size is expected)"
            )
        raw = bytes(data)
        try:
            obj = parse_json(raw)
        except CanonicalEncodingError as exc:
            raise MalformedEnvelope(f"envelope is not valid JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise MalformedEnvelope(f"envelope must be a JSON object, got a JSON {type(obj).__name__}")
        if WIRE_VERSION not in obj:
            raise MalformedEnvelope(
                f"envelope has no {WIRE_VERSION!r} field; it was not made by sign_envelope"
            )
        version = obj[WIRE_VERSION]
        if _is_int(version) and version not in SUPPORTED_VERSIONS:
            raise UnsupportedVersion(_unsupported_message(version))
        missing = sorted(WIRE_FIELDS - obj.keys())
        if missing:
            raise MalformedEnvelope(
                f"envelope is missing field(s) {', '.join(missing)}; send all of {sorted(WIRE_FIELDS)}"
            )
        unknown = sorted(obj.keys() - WIRE_FIELDS)
        if unknown:
            raise MalformedEnvelope(
                f"envelope has unknown field(s) {', '.join(map(repr, unknown))}; version {ENVELOPE_VERSION} "
                f"has exactly {sorted(WIRE_FIELDS)}"
            )
        payload_text = obj[WIRE_PAYLOAD]
        if not isinstance(payload_text, str):
            raise MalformedEnvelope(f"payload must be a base64 string, got {_show(payload_text)}")
        try:
            payload = b64decode(payload_text)
        except CanonicalEncodingError as exc:
            raise MalformedEnvelope(f"payload: {exc}") from None
        env = cls(
            version=obj[WIRE_VERSION],
            type=obj[WIRE_TYPE],
            sender=obj[WIRE_SENDER],
            timestamp_ms=obj[WIRE_TIMESTAMP_MS],
            nonce=obj[WIRE_NONCE],
            payload_sha256=obj[WIRE_PAYLOAD_SHA256],
            signature=obj[WIRE_SIGNATURE],
            payload=payload,
        )
        if env.to_bytes() != raw:
            raise MalformedEnvelope(
                "envelope is not in canonical form (key order, whitespace, escapes or number spelling "
                "differ); send exactly the bytes Envelope.to_bytes() produced"
            )
        return env


def _unsupported_message(version: int) -> str:
    return (
        f"envelope version {version} is not supported (this node speaks {sorted(SUPPORTED_VERSIONS)}); "
        "upgrade rewardnode on whichever side is older"
    )


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def sign_envelope(
    identity: Identity, msg_type: str, payload: bytes, *, now_ms: int | None = None
) -> Envelope:
    """Wrap `payload` in an envelope of type `msg_type`, signed by `identity`, with a fresh random nonce.

    `now_ms` (milliseconds since the epoch) defaults to the wall clock; tests pass it.
    """
    if not isinstance(identity, Identity):
        raise ValueError(
            f"sign_envelope needs an Identity, not {type(identity).__name__}; load one with Identity.load"
        )
    _check_type(msg_type, "msg_type")
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise ValueError(
            f"payload must be bytes, not {type(payload).__name__}; encode it with canonical_json first"
        )
    body = bytes(payload)
    timestamp_ms = _now_ms() if now_ms is None else now_ms
    sender = identity.public_key_hex
    nonce = os.urandom(NONCE_BYTES).hex()
    digest = sha256_hex(body)
    signature = identity.sign(_signing_input(ENVELOPE_VERSION, msg_type, sender, timestamp_ms, nonce, digest))
    return Envelope(
        version=ENVELOPE_VERSION,
        type=msg_type,
        sender=sender,
        timestamp_ms=timestamp_ms,
        nonce=nonce,
        payload_sha256=digest,
        signature=signature.hex(),
        payload=body,
    )


def _as_hex_key(key: str | PublicKey) -> str:
    return PublicKey.parse(key).hex


class Verifier:
    """Checks envelopes: version, type, sender, allowlist, age, signature, payload hash, then replay.

    Checks run cheapest first, and a nonce is remembered only once everything else has passed, so
    a forged or damaged envelope never uses up the nonce of the genuine one. Nonces are remembered
    until their envelope would be stale anyway (`timestamp_ms + max_age`), so memory grows with
    message rate x window, never past `max_nonces`: when full, the entry expiring soonest is dropped
    and envelopes at least as old as it are refused as stale from then on, which keeps replay
    protection exact at the cost of a shorter window under flood. For the same reason time never
    runs backwards for a verifier: once it has forgotten a nonce, an envelope that old is refused
    even if the clock is later set back. Safe to share between threads.

    `allowlist=None` accepts any sender (the signature still has to match the claimed one); an
    empty allowlist accepts no one.
    """

    def __init__(
        self,
        allowlist: Iterable[str | PublicKey] | None = None,
        *,
        max_age_s: float = 300,
        max_skew_s: float = 30,
        max_nonces: int = 100_000,
        clock_ms: Callable[[], int] | None = None,
    ) -> None:
        if isinstance(allowlist, str | PublicKey):
            raise ValueError("allowlist is a collection of public keys; wrap a single key in a set: {key}")
        for name, value in (("max_age_s", max_age_s), ("max_skew_s", max_skew_s)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 10**9:
                raise ValueError(f"{name} must be a non-negative number of seconds, got {value!r}")
        if isinstance(max_nonces, bool) or not isinstance(max_nonces, int) or max_nonces < 1:
            raise ValueError(f"max_nonces must be a positive integer, got {max_nonces!r}")
        self._allowlist: frozenset[str] | None = (
            None if allowlist is None else frozenset(_as_hex_key(k) for k in allowlist)
        )
        self.max_age_ms = round(max_age_s * 1000)
        self.max_skew_ms = round(max_skew_s * 1000)
        self.max_nonces = max_nonces
        self._clock_ms = clock_ms or _now_ms
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str], int] = {}  # (sender, nonce) -> expiry in ms
        self._expiries: list[tuple[int, str, str]] = []  # min-heap of (expiry, sender, nonce)
        self._floor_ms = -1  # envelopes whose expiry is <= this are refused: their nonce may be forgotten

    @property
    def allowlist(self) -> frozenset[str] | None:
        """The accepted senders as lowercase hex, or None for any sender."""
        return self._allowlist

    @property
    def nonces_remembered(self) -> int:
        """How many nonces the replay cache holds now."""
        with self._lock:
            return len(self._seen)

    def verify(
        self,
        env: Envelope,
        *,
        expected_type: str | None = None,
        expected_sender: str | PublicKey | None = None,
        now_ms: int | None = None,
    ) -> bytes:
        """Check `env` completely and return its payload, or raise the `EnvelopeError` that says why not."""
        if not isinstance(env, Envelope):
            raise MalformedEnvelope(
                f"verify takes an Envelope, not {type(env).__name__}; parse with Envelope.from_bytes"
            )
        now = self._clock_ms() if now_ms is None else now_ms
        who = _who(env.sender)
        # 1. structure and routing: free.
        if env.version not in SUPPORTED_VERSIONS:
            raise UnsupportedVersion(_unsupported_message(env.version))
        if expected_type is not None and env.type != expected_type:
            raise WrongType(
                f"envelope from {who} has type {env.type!r} but {expected_type!r} was expected; "
                "the peer sent the wrong kind of message, or it was routed to the wrong handler"
            )
        if expected_sender is not None:
            expected = _as_hex_key(expected_sender)
            if env.sender != expected:
                raise WrongSender(
                    f"envelope is from {who} but {_who(expected)} was expected; drop it "
                    "(a peer answering for another, or a misrouted message)"
                )
        if self._allowlist is not None and env.sender not in self._allowlist:
            raise UnknownSender(
                f"sender {env.sender} ({who}) is not in this node's allowlist; add its public key "
                "to the allowlist if it is a trusted peer"
            )
        # 2. time window and a cheap look at the replay cache (no signature work for duplicates).
        expiry = env.timestamp_ms + self.max_age_ms
        self._check_time(env, who, now, expiry)
        with self._lock:
            already_seen = (env.sender, env.nonce) in self._seen
        if already_seen:
            raise ReplayedNonce(_replay_message(env, who))
        # 3. cryptography: the signature, then the payload it binds through its hash.
        if not env.sender_key.verify(env.signing_input(), bytes.fromhex(env.signature)):
            raise BadSignature(
                f"signature does not verify for sender {who}: the header was altered, or a different key "
                "signed it than the one it names; drop it"
            )
        if sha256_hex(env.payload) != env.payload_sha256:
            raise PayloadTampered(
                f"payload from {who} hashes to {sha256_hex(env.payload)[:16]}... but the signed header says "
                f"{env.payload_sha256[:16]}...: it was altered or truncated in transit; ask the sender to resend"
            )
        # 4. only now does the envelope use up its nonce.
        self._remember(env, who, now, expiry)
        return env.payload

    def verify_bytes(
        self,
        data: bytes,
        *,
        expected_type: str | None = None,
        expected_sender: str | PublicKey | None = None,
        now_ms: int | None = None,
        max_bytes: int = DEFAULT_MAX_ENVELOPE_BYTES,
    ) -> Envelope:
        """Parse wire bytes and `verify` them; returns the verified envelope (payload in `.payload`)."""
        env = Envelope.from_bytes(data, max_bytes=max_bytes)
        self.verify(env, expected_type=expected_type, expected_sender=expected_sender, now_ms=now_ms)
        return env

    def _check_time(self, env: Envelope, who: str, now: int, expiry: int) -> None:
        if env.timestamp_ms > now + self.max_skew_ms:
            raise StaleEnvelope(
                f"envelope from {who} is timestamped {(env.timestamp_ms - now) / 1000:.1f}s in the future, "
                f"over the {self.max_skew_ms / 1000:g}s allowed clock skew; sync the clocks (NTP) on both nodes"
            )
        if expiry < now:
            raise StaleEnvelope(
                f"envelope from {who} is {(now - env.timestamp_ms) / 1000:.1f}s old, over the "
                f"{self.max_age_ms / 1000:g}s limit; a delayed or replayed message, or the sender's clock is behind"
            )
        with self._lock:
            floor = self._floor_ms
        if expiry <= floor:
            raise StaleEnvelope(_horizon_message(who))

    def _remember(self, env: Envelope, who: str, now: int, expiry: int) -> None:
        """Atomically check the nonce is new and record it until `expiry`."""
        key = (env.sender, env.nonce)
        with self._lock:
            heap = self._expiries
            while heap and heap[0][0] < now:
                old_expiry, sender, nonce = heapq.heappop(heap)
                del self._seen[(sender, nonce)]
                self._floor_ms = max(self._floor_ms, old_expiry)
            if expiry <= self._floor_ms:
                raise StaleEnvelope(_horizon_message(who))
            if key in self._seen:
                raise ReplayedNonce(_replay_message(env, who))
            if len(self._seen) >= self.max_nonces:
                if expiry <= heap[0][0]:
                    raise StaleEnvelope(_horizon_message(who))
                old_expiry, sender, nonce = heapq.heappop(heap)
                del self._seen[(sender, nonce)]
                self._floor_ms = max(self._floor_ms, old_expiry)
            heapq.heappush(heap, (expiry, env.sender, env.nonce))
            self._seen[key] = expiry


def _replay_message(env: Envelope, who: str) -> str:
    return (
        f"envelope {env.nonce} from {who} was already accepted; drop this copy (a retransmission or a replay)"
    )


def _horizon_message(who: str) -> str:
    return (
        f"envelope from {who} is older than this verifier's replay horizon (its nonce cache was full, "
        "or the clock moved back), so a replay could not be ruled out; ask the sender to send a fresh one"
    )
