"""Round manifests: the coordinator's signed record of each round, chained round to round.

A manifest (envelope type `MANIFEST_TYPE`, signed by the coordinator) lists the contributions it
aggregated (sender, update hash, example count and the member's signed envelope verbatim), the
rejections with their reasons, the hash of the global arrays before and after the round, and the
SHA-256 of the previous manifest's envelope bytes. `verify_chain` re-checks all of it offline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from federation.agreement import Agreement
from federation.contribution import Accepted, ContributionClaim, Rejection
from federation.errors import ChainBroken
from protocol.canonical import canonical_json, parse_json, sha256_hex
from protocol.envelope import Envelope, Verifier, sign_envelope
from protocol.errors import EnvelopeError
from protocol.identity import Identity

MANIFEST_TYPE = "rewardnode/federation/manifest"
GENESIS = "0" * 64
"""`prev_manifest_sha256` of round 1."""
LONG_LIVED_S = 10**9 - 1
"""Manifests are records: checked for signatures and hashes, not freshness."""


@dataclass(frozen=True)
class RoundManifest:
    """One round's record (the payload the coordinator signs)."""

    federation_id: str
    round: int
    strategy: str
    base_model_sha256: str
    global_before_sha256: str
    aggregate_sha256: str
    prev_manifest_sha256: str
    contributions: tuple[dict[str, Any], ...] = field(default_factory=tuple)
    rejections: tuple[dict[str, Any], ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return {
            "federation_id": self.federation_id, "round": self.round, "strategy": self.strategy,
            "base_model_sha256": self.base_model_sha256, "global_before_sha256": self.global_before_sha256,
            "aggregate_sha256": self.aggregate_sha256, "prev_manifest_sha256": self.prev_manifest_sha256,
            "contributions": list(self.contributions), "rejections": list(self.rejections),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RoundManifest:
        return cls(**{**d, "contributions": tuple(d["contributions"]), "rejections": tuple(d["rejections"])})


def build_manifest(agreement: Agreement, round: int, *, global_before_sha256: str, aggregate_sha256: str,
                   prev_manifest_sha256: str, accepted: Sequence[Accepted],
                   rejected: Sequence[Rejection]) -> RoundManifest:
    """The manifest of a finished round."""
    return RoundManifest(
        federation_id=agreement.federation_id, round=round, strategy=agreement.strategy,
        base_model_sha256=agreement.base_model_sha256, global_before_sha256=global_before_sha256,
        aggregate_sha256=aggregate_sha256, prev_manifest_sha256=prev_manifest_sha256,
        contributions=tuple({"sender": a.sender, "update_sha256": a.update_sha256, "num_examples": a.num_examples,
                             "envelope": a.envelope} for a in accepted),
        rejections=tuple(r.to_dict() for r in rejected),
    )


def sign_manifest(coordinator: Identity, manifest: RoundManifest) -> str:
    """The signed manifest as canonical envelope JSON (what chains store)."""
    return sign_envelope(coordinator, MANIFEST_TYPE, canonical_json(manifest.to_dict())).to_json()


def manifest_link(envelope_json: str) -> str:
    """The hash the next manifest's `prev_manifest_sha256` must equal."""
    return sha256_hex(envelope_json.encode("utf-8"))


def verify_chain(chain: Sequence[str], agreement: Agreement, *, final_sha256: str | None = None) -> list[RoundManifest]:
    """Re-check a chain of signed manifests; raises `ChainBroken` naming the first break.

    Checks, per round: the coordinator's signature, the federation/base/strategy, the round number,
    the link to the previous manifest and its aggregate, every contribution's member signature and
    claim; and that the last aggregate equals `final_sha256` when given.
    """
    if not chain:
        raise ChainBroken("the model carries no manifests; it was not produced by a federation round")
    coordinator = Verifier({agreement.coordinator}, max_age_s=LONG_LIVED_S, max_skew_s=LONG_LIVED_S)
    members = Verifier(set(agreement.members), max_age_s=LONG_LIVED_S, max_skew_s=LONG_LIVED_S)
    out: list[RoundManifest] = []
    prev_link, prev_aggregate = GENESIS, None
    for i, envelope_json in enumerate(chain, start=1):
        where = f"manifest {i} of {len(chain)}"
        try:
            env = Envelope.from_json(envelope_json)
            m = RoundManifest.from_dict(parse_json(coordinator.verify(env, expected_type=MANIFEST_TYPE)))
        except (EnvelopeError, ValueError, TypeError, KeyError) as exc:
            raise ChainBroken(f"{where}: coordinator signature or encoding does not verify: {exc}") from None
        if m.federation_id != agreement.federation_id or m.base_model_sha256 != agreement.base_model_sha256:
            raise ChainBroken(f"{where}: belongs to another federation or base model")
        if m.round != i:
            raise ChainBroken(f"{where}: says round {m.round}, expected round {i} (a round is missing or reordered)")
        if m.prev_manifest_sha256 != prev_link:
            raise ChainBroken(f"{where}: prev_manifest_sha256 does not match manifest {i - 1} (chain re-linked)")
        if prev_aggregate is not None and m.global_before_sha256 != prev_aggregate:
            raise ChainBroken(f"{where}: starts from global {m.global_before_sha256[:16]}..., round {i - 1} "
                              f"produced {prev_aggregate[:16]}...")
        for c in m.contributions:
            try:
                claim = ContributionClaim.parse(members.verify(Envelope.from_json(c["envelope"]),
                                                               expected_type="rewardnode/federation/contribution"))
            except (EnvelopeError, ValueError, TypeError, KeyError) as exc:
                raise ChainBroken(f"{where}: contribution from {str(c.get('sender'))[:16]}... does not verify: "
                                  f"{exc}") from None
            if (claim.update_sha256, claim.num_examples, claim.round, claim.federation_id) != (
                    c["update_sha256"], c["num_examples"], m.round, m.federation_id):
                raise ChainBroken(f"{where}: contribution from {str(c['sender'])[:16]}... does not match its signed claim")
        prev_link, prev_aggregate = manifest_link(envelope_json), m.aggregate_sha256
        out.append(m)
    if final_sha256 is not None and prev_aggregate != final_sha256:
        raise ChainBroken(f"the model's shared arrays hash to {final_sha256[:16]}..., the last manifest says "
                          f"{str(prev_aggregate)[:16]}... (the weights were changed after the federation)")
    return out
