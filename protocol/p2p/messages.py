"""What nodes say to each other over the peer-to-peer layer: frozen dataclasses, canonically encoded.

Every message is a frozen dataclass with a wire `TYPE`, `to_payload()` (canonical JSON of its
fields) and a strict `from_payload()` that accepts exactly the keys and types it writes. On the wire
a message is always the payload of a signed `protocol.envelope.Envelope` whose `type` is the
message's `TYPE`: `seal()` wraps one, `open_envelope()` reads one back after the caller verified it.

>>> from protocol.identity import Identity
>>> me = Identity.from_seed(bytes(32))
>>> desc = NodeDescriptor("org-a", me.public_key_hex, "12D3KooW...", ("/ip4/127.0.0.1/tcp/4001",), ("rm",))
>>> open_envelope(seal(me, desc)) == desc
True
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from protocol.canonical import canonical_json, parse_json
from protocol.envelope import Envelope, sign_envelope
from protocol.errors import CanonicalEncodingError, MalformedEnvelope
from protocol.identity import Identity

_HEX64 = re.compile(r"[0-9a-f]{64}")
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MAX_ADDRESSES = 16
MAX_CAPABILITIES = 32
MAX_MEMBERS = 1024
MAX_CHUNKS = 65_536
"""At most 64 Ki chunks per artifact (64 GiB at the default 1 MiB chunk): bounds announcement size."""


class MessageError(MalformedEnvelope):
    """A payload is not the canonical encoding of the message its envelope type names."""


def _fail(type_: str, what: str) -> MessageError:
    return MessageError(f"{type_} payload: {what}; re-create it with the message dataclass and seal()")


def _obj(type_: str, data: bytes, keys: frozenset[str]) -> dict[str, Any]:
    try:
        obj = parse_json(data)
    except CanonicalEncodingError as exc:
        raise _fail(type_, f"not JSON ({exc})") from None
    if not isinstance(obj, dict) or set(obj) != keys:
        got = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise _fail(type_, f"expected exactly the keys {sorted(keys)}, got {got}")
    if canonical_json(obj) != bytes(data):
        raise _fail(type_, "not in canonical form")
    return obj


def _str(type_: str, obj: Mapping[str, Any], key: str, pattern: re.Pattern[str] | None = None) -> str:
    value = obj[key]
    if not isinstance(value, str) or not value or len(value) > 1024:
        raise _fail(type_, f"{key} must be a non-empty string of at most 1024 characters")
    if pattern is not None and not pattern.fullmatch(value):
        raise _fail(type_, f"{key}={value[:80]!r} has the wrong form")
    return value


def _int(type_: str, obj: Mapping[str, Any], key: str, lo: int = 0, hi: int = 2**53 - 1) -> int:
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise _fail(type_, f"{key} must be an integer in [{lo}, {hi}], got {value!r}")
    return value


def _strs(
    type_: str, obj: Mapping[str, Any], key: str, limit: int, pattern: re.Pattern[str] | None = None
) -> tuple[str, ...]:
    value = obj[key]
    if not isinstance(value, list) or len(value) > limit:
        raise _fail(type_, f"{key} must be a list of at most {limit} strings")
    out = tuple(_str(type_, {key: v}, key, pattern) for v in value)
    return out


def _check_hex64(type_: str, name: str, value: str) -> None:
    if not _HEX64.fullmatch(value):
        raise ValueError(f"{type_}: {name} must be 64 lowercase hex characters, got {value[:80]!r}")


@dataclass(frozen=True)
class NodeDescriptor:
    """A node introducing itself: who it is and where to reach it."""

    TYPE: ClassVar[str] = "p2p/node"
    name: str
    """Human-readable node name (node.toml [node] name)."""
    public_key: str
    """Ed25519 public key, 64 lowercase hex; must equal the envelope sender."""
    peer_id: str
    """libp2p peer ID (base58), derived from the same key."""
    addresses: tuple[str, ...]
    """Multiaddrs the node listens on, e.g. `/ip4/203.0.113.5/tcp/4001`."""
    capabilities: tuple[str, ...] = ()
    """What it offers, e.g. `rm` (serves reward models), `superlink` (coordinates federations)."""

    def __post_init__(self) -> None:
        _check_hex64(self.TYPE, "public_key", self.public_key)

    def to_payload(self) -> bytes:
        return canonical_json({"name": self.name, "public_key": self.public_key, "peer_id": self.peer_id,
                               "addresses": list(self.addresses), "capabilities": list(self.capabilities)})

    @classmethod
    def from_payload(cls, data: bytes) -> NodeDescriptor:
        t = cls.TYPE
        obj = _obj(t, data, frozenset({"name", "public_key", "peer_id", "addresses", "capabilities"}))
        return cls(_str(t, obj, "name", _ID_RE), _str(t, obj, "public_key", _HEX64), _str(t, obj, "peer_id"),
                   _strs(t, obj, "addresses", MAX_ADDRESSES), _strs(t, obj, "capabilities", MAX_CAPABILITIES))


@dataclass(frozen=True)
class MembershipRules:
    """Who may join a federation."""

    allowlist: tuple[str, ...] = ()
    """Public keys (hex) admitted; empty means anyone who asks (the coordinator still decides)."""
    min_members: int = 2
    """Rounds start only with at least this many members."""
    max_members: int = 64
    """The coordinator admits no more than this many members."""

    def to_obj(self) -> dict[str, Any]:
        return {"allowlist": list(self.allowlist), "min_members": self.min_members,
                "max_members": self.max_members}


@dataclass(frozen=True)
class Schedule:
    """When a federation's rounds run."""

    start_ms: int
    """First round opens at this time, ms since the epoch."""
    rounds: int
    """Number of rounds planned."""
    round_timeout_s: int = 600
    """How long a round waits for updates."""

    def to_obj(self) -> dict[str, Any]:
        return {"start_ms": self.start_ms, "rounds": self.rounds, "round_timeout_s": self.round_timeout_s}


@dataclass(frozen=True)
class FederationAnnouncement:
    """A coordinator inviting members: join `superlink` to take part in federation `federation_id`."""

    TYPE: ClassVar[str] = "p2p/federation"
    federation_id: str
    """Short stable id, e.g. `helpfulness-2025`."""
    coordinator: str
    """Coordinator's public key (hex); must equal the envelope sender."""
    superlink: str
    """Flower SuperLink address members connect to, `host:port`."""
    membership: MembershipRules
    schedule: Schedule

    def __post_init__(self) -> None:
        _check_hex64(self.TYPE, "coordinator", self.coordinator)

    def to_payload(self) -> bytes:
        return canonical_json({"federation_id": self.federation_id, "coordinator": self.coordinator,
                               "superlink": self.superlink, "membership": self.membership.to_obj(),
                               "schedule": self.schedule.to_obj()})

    @classmethod
    def from_payload(cls, data: bytes) -> FederationAnnouncement:
        t = cls.TYPE
        obj = _obj(t, data, frozenset({"federation_id", "coordinator", "superlink", "membership", "schedule"}))
        m, s = obj["membership"], obj["schedule"]
        if not isinstance(m, dict) or set(m) != {"allowlist", "min_members", "max_members"}:
            raise _fail(t, "membership must have exactly allowlist, min_members, max_members")
        if not isinstance(s, dict) or set(s) != {"start_ms", "rounds", "round_timeout_s"}:
            raise _fail(t, "schedule must have exactly start_ms, rounds, round_timeout_s")
        rules = MembershipRules(_strs(t, m, "allowlist", MAX_MEMBERS, _HEX64),
                                _int(t, m, "min_members", 1, MAX_MEMBERS), _int(t, m, "max_members", 1, MAX_MEMBERS))
        schedule = Schedule(_int(t, s, "start_ms"), _int(t, s, "rounds", 1, 100_000),
                            _int(t, s, "round_timeout_s", 1, 7 * 86_400))
        return cls(_str(t, obj, "federation_id", _ID_RE), _str(t, obj, "coordinator", _HEX64),
                   _str(t, obj, "superlink"), rules, schedule)


@dataclass(frozen=True)
class RoundManifest:
    """A coordinator opening round `round` of a federation on global model `model_sha256`."""

    TYPE: ClassVar[str] = "p2p/round"
    federation_id: str
    round: int
    model_sha256: str
    """The global model members start from (fetch it by hash with transfer.fetch)."""
    deadline_ms: int
    """Updates arriving after this time are ignored."""

    def __post_init__(self) -> None:
        _check_hex64(self.TYPE, "model_sha256", self.model_sha256)

    def to_payload(self) -> bytes:
        return canonical_json({"federation_id": self.federation_id, "round": self.round,
                               "model_sha256": self.model_sha256, "deadline_ms": self.deadline_ms})

    @classmethod
    def from_payload(cls, data: bytes) -> RoundManifest:
        t = cls.TYPE
        obj = _obj(t, data, frozenset({"federation_id", "round", "model_sha256", "deadline_ms"}))
        return cls(_str(t, obj, "federation_id", _ID_RE), _int(t, obj, "round"),
                   _str(t, obj, "model_sha256", _HEX64), _int(t, obj, "deadline_ms"))


@dataclass(frozen=True)
class ArtifactManifest:
    """How an artifact is cut into chunks, so each chunk can be checked on arrival."""

    chunk_size: int
    """Bytes per chunk (the last may be shorter)."""
    chunk_sha256: tuple[str, ...]
    """SHA-256 (hex) of every chunk, in order."""
    kind: str = "reward-model"
    """What it is: `reward-model`, `adapter`, `dataset-stats`..."""
    format: str = "safetensors"
    """File format of the whole artifact."""

    def to_obj(self) -> dict[str, Any]:
        return {"chunk_size": self.chunk_size, "chunk_sha256": list(self.chunk_sha256), "kind": self.kind,
                "format": self.format}


@dataclass(frozen=True)
class ModelAnnouncement:
    """A node saying "I hold the artifact with this hash; fetch it from me"."""

    TYPE: ClassVar[str] = "p2p/model"
    sha256: str
    """SHA-256 (hex) of the whole artifact."""
    size: int
    """Size in bytes."""
    manifest: ArtifactManifest

    def __post_init__(self) -> None:
        _check_hex64(self.TYPE, "sha256", self.sha256)
        n = len(self.manifest.chunk_sha256)
        expected = max(1, -(-self.size // self.manifest.chunk_size)) if self.manifest.chunk_size > 0 else -1
        if n != expected:
            raise ValueError(f"{self.TYPE}: {n} chunk hashes for {self.size} bytes in chunks of "
                             f"{self.manifest.chunk_size}; expected {expected}: rebuild it with transfer.manifest_for")

    def to_payload(self) -> bytes:
        return canonical_json({"sha256": self.sha256, "size": self.size, "manifest": self.manifest.to_obj()})

    @classmethod
    def from_payload(cls, data: bytes) -> ModelAnnouncement:
        t = cls.TYPE
        obj = _obj(t, data, frozenset({"sha256", "size", "manifest"}))
        m = obj["manifest"]
        if not isinstance(m, dict) or set(m) != {"chunk_size", "chunk_sha256", "kind", "format"}:
            raise _fail(t, "manifest must have exactly chunk_size, chunk_sha256, kind, format")
        manifest = ArtifactManifest(_int(t, m, "chunk_size", 1 << 10, 16 << 20), _strs(t, m, "chunk_sha256", MAX_CHUNKS, _HEX64),
                                    _str(t, m, "kind", _ID_RE), _str(t, m, "format", _ID_RE))
        try:
            return cls(_str(t, obj, "sha256", _HEX64), _int(t, obj, "size"), manifest)
        except ValueError as exc:
            raise _fail(t, str(exc)) from None


Message = NodeDescriptor | FederationAnnouncement | RoundManifest | ModelAnnouncement
MESSAGE_TYPES: dict[str, type[Message]] = {
    c.TYPE: c for c in (NodeDescriptor, FederationAnnouncement, RoundManifest, ModelAnnouncement)
}
M = TypeVar("M", NodeDescriptor, FederationAnnouncement, RoundManifest, ModelAnnouncement)


_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def ed25519_peer_id(public_key_hex: str) -> str:
    """The libp2p peer ID (base58) of an Ed25519 public key, without libp2p: the identity multihash
    (0x00, length 36) of the key's protobuf form (Type = Ed25519: 08 01, Data: 12 20 + the 32 bytes).

    >>> ed25519_peer_id("00" * 32)[:8]
    '12D3KooW'
    """
    raw = bytes.fromhex(public_key_hex)
    if len(raw) != 32:
        raise ValueError(f"an Ed25519 public key has 32 bytes, not {len(raw)}")
    data = bytes([0x00, 36, 0x08, 0x01, 0x12, 0x20]) + raw
    n, out = int.from_bytes(data, "big"), ""
    while n:
        n, r = divmod(n, 58)
        out = _B58[r] + out
    return "1" * (len(data) - len(data.lstrip(b"\x00"))) + out


def seal(identity: Identity, message: Message, *, now_ms: int | None = None) -> Envelope:
    """`message` in a fresh envelope signed by `identity`."""
    return sign_envelope(identity, message.TYPE, message.to_payload(), now_ms=now_ms)


def open_envelope(env: Envelope) -> Message:
    """The message inside an envelope (call after `Verifier.verify`); checks the sender binds where it must."""
    cls = MESSAGE_TYPES.get(env.type)
    if cls is None:
        raise MessageError(f"unknown message type {env.type!r}; known: {sorted(MESSAGE_TYPES)}")
    msg = cls.from_payload(env.payload)
    if isinstance(msg, NodeDescriptor) and msg.public_key != env.sender:
        raise MessageError("a node descriptor must be signed by the key it describes; drop it")
    if isinstance(msg, NodeDescriptor) and msg.peer_id != ed25519_peer_id(msg.public_key):
        raise MessageError("a node descriptor's peer_id must be the one its public key gives (another node's "
                           "peer ID would let its signer take that node's place); drop it")
    if isinstance(msg, FederationAnnouncement) and msg.coordinator != env.sender:
        raise MessageError("a federation announcement must be signed by its coordinator; drop it")
    return msg
