"""Signed contributions: one member's update for one round, and the coordinator's check of it.

A member signs (protocol envelope, type `CONTRIBUTION_TYPE`) the canonical JSON of
`ContributionClaim`: federation id, round, base-model hash, example count and the SHA-256 of the
update's canonical array bytes (federation/codec.py). The envelope adds the sender key, a timestamp
and a nonce. The coordinator re-hashes the arrays it received and checks the claim before the
update may enter aggregation; anything else becomes a `Rejection` with a reason code.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from federation.codec import Arrays, arrays_sha256
from protocol.canonical import canonical_json, parse_json
from protocol.envelope import Envelope, Verifier, sign_envelope
from protocol.errors import (
    BadSignature,
    CanonicalEncodingError,
    EnvelopeError,
    MalformedEnvelope,
    PayloadTampered,
    ReplayedNonce,
    StaleEnvelope,
    UnknownSender,
)
from protocol.identity import Identity

log = logging.getLogger(__name__)

CONTRIBUTION_TYPE = "rewardnode/federation/contribution"

# Rejection reason codes (stable strings: they go into signed manifests).
UNKNOWN_KEY = "unknown-key"
BAD_SIGNATURE = "bad-signature"
TAMPERED = "payload-tampered"
REPLAYED = "replayed-nonce"
STALE = "stale"
MALFORMED = "malformed"
WRONG_FEDERATION = "wrong-federation"
WRONG_ROUND = "wrong-round"
WRONG_BASE = "wrong-base-model"
HASH_MISMATCH = "update-hash-mismatch"
NON_FINITE = "non-finite"
WRONG_SHAPES = "wrong-shapes"
BAD_COUNT = "bad-example-count"
DUPLICATE_SENDER = "duplicate-sender"
NO_REPLY = "no-reply"
MEMBER_ERROR = "member-error"  # the member replied, with an error (its local training failed)
OUTLIER = "outlier-update"  # valid, but its norm or direction is an outlier among the round's (screen_outliers)
NOT_SELECTED = "not-selected"  # valid, but the rule (Krum) aggregated other updates


@dataclass(frozen=True)
class ContributionClaim:
    """What a member signs about its update."""

    federation_id: str
    round: int
    base_model_sha256: str
    update_sha256: str
    num_examples: int

    def payload(self) -> bytes:
        return canonical_json({
            "federation_id": self.federation_id, "round": self.round, "base_model_sha256": self.base_model_sha256,
            "update_sha256": self.update_sha256, "num_examples": self.num_examples,
        })

    @classmethod
    def parse(cls, payload: bytes) -> ContributionClaim:
        obj = parse_json(payload)
        if not isinstance(obj, dict) or set(obj) != {"federation_id", "round", "base_model_sha256",
                                                     "update_sha256", "num_examples"}:
            raise MalformedEnvelope("contribution payload does not have exactly the five claim fields")
        claim = cls(**obj)
        if claim.payload() != payload:
            raise MalformedEnvelope("contribution payload is not canonical JSON")
        return claim


@dataclass(frozen=True)
class RoundContext:
    """What the coordinator expects of every contribution in a round."""

    federation_id: str
    round: int
    base_model_sha256: str
    shapes: Mapping[str, tuple[int, ...]]


@dataclass(frozen=True)
class Accepted:
    """A verified contribution, ready to aggregate."""

    sender: str
    update: Arrays
    num_examples: int
    update_sha256: str
    envelope: str
    """The contribution envelope's canonical JSON, kept verbatim in the manifest."""


@dataclass(frozen=True)
class Rejection:
    """A dropped reply and why (sender is "" when it could not be established)."""

    sender: str
    reason: str
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"sender": self.sender, "reason": self.reason, "detail": self.detail}


def sign_contribution(identity: Identity, update: Mapping[str, NDArray[np.floating]], *, federation_id: str,
                      round: int, base_model_sha256: str, num_examples: int) -> Envelope:
    """Sign the claim for `update` (named float32 arrays) as this node."""
    claim = ContributionClaim(federation_id, round, base_model_sha256, arrays_sha256(update), num_examples)
    return sign_envelope(identity, CONTRIBUTION_TYPE, claim.payload())


_ENVELOPE_REASONS: tuple[tuple[type[EnvelopeError], str], ...] = (
    (UnknownSender, UNKNOWN_KEY), (BadSignature, BAD_SIGNATURE), (PayloadTampered, TAMPERED),
    (ReplayedNonce, REPLAYED), (StaleEnvelope, STALE),
)


def _reason(exc: EnvelopeError) -> str:
    for cls, code in _ENVELOPE_REASONS:
        if isinstance(exc, cls):
            return code
    return MALFORMED


def verify_contribution(envelope_json: str, update: Mapping[str, NDArray[np.floating]], ctx: RoundContext,
                        verifier: Verifier) -> Accepted | Rejection:
    """Check one reply completely; never raises for a bad reply (it becomes a `Rejection`)."""
    try:
        env = Envelope.from_json(envelope_json)
    except (EnvelopeError, CanonicalEncodingError) as exc:
        return Rejection("", MALFORMED, str(exc))
    sender = env.sender
    try:
        payload = verifier.verify(env, expected_type=CONTRIBUTION_TYPE)
        claim = ContributionClaim.parse(payload)
    except EnvelopeError as exc:
        return Rejection(sender, _reason(exc), str(exc))
    except (CanonicalEncodingError, TypeError, ValueError) as exc:
        return Rejection(sender, MALFORMED, str(exc))
    if claim.federation_id != ctx.federation_id:
        return Rejection(sender, WRONG_FEDERATION, f"claims federation {claim.federation_id[:16]}...")
    if claim.round != ctx.round:
        return Rejection(sender, WRONG_ROUND, f"claims round {claim.round}, this is round {ctx.round}")
    if claim.base_model_sha256 != ctx.base_model_sha256:
        return Rejection(sender, WRONG_BASE, f"trained on base {claim.base_model_sha256[:16]}...")
    if isinstance(claim.num_examples, bool) or not isinstance(claim.num_examples, int) or claim.num_examples < 1:
        return Rejection(sender, BAD_COUNT, f"num_examples = {claim.num_examples!r} must be a positive int")
    got = {n: tuple(np.asarray(a).shape) for n, a in update.items()}
    if got != dict(ctx.shapes):
        diff = sorted(set(got.items()) ^ set(ctx.shapes.items()))[:3]
        return Rejection(sender, WRONG_SHAPES, f"arrays differ from the global model's, e.g. {diff}")
    if not all(np.isfinite(np.asarray(a)).all() for a in update.values()):
        return Rejection(sender, NON_FINITE, "the update holds NaN or Inf")
    digest = arrays_sha256(update)
    if digest != claim.update_sha256:
        return Rejection(sender, HASH_MISMATCH, f"arrays hash to {digest[:16]}..., signed {claim.update_sha256[:16]}...")
    arrays: Arrays = {n: np.asarray(a, dtype=np.float32) for n, a in update.items()}
    return Accepted(sender, arrays, claim.num_examples, digest, envelope_json)


def verify_round(replies: list[tuple[str, Mapping[str, NDArray[np.floating]]]], ctx: RoundContext,
                 verifier: Verifier) -> tuple[list[Accepted], list[Rejection]]:
    """Check every reply of a round; a second valid contribution from one sender is rejected."""
    accepted: list[Accepted] = []
    rejected: list[Rejection] = []
    for envelope_json, update in replies:
        result = verify_contribution(envelope_json, update, ctx, verifier)
        if isinstance(result, Accepted) and any(a.sender == result.sender for a in accepted):
            result = Rejection(result.sender, DUPLICATE_SENDER, "a contribution from this key was already accepted")
        if isinstance(result, Rejection):
            log.warning("round %d: rejected contribution from %s: %s (%s)", ctx.round,
                        result.sender[:16] or "?", result.reason, result.detail)
            rejected.append(result)
        else:
            accepted.append(result)
    return accepted, rejected
