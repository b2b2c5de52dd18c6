"""Round bookkeeping, free of Flower: verify replies, aggregate updates, sign the manifest.

The coordinator's state between rounds is the global arrays and the manifest chain; `CoordinatorRound`
turns one round's raw replies into the next global arrays and one more signed manifest, or raises
`BelowQuorum` (and leaves the state as it was) when too few valid contributions remain. With the
agreement's `screen_outliers` on, valid updates whose norm or direction is an outlier among the round's
are left out of the aggregate and recorded as rejections; the quorum counts valid contributions before
that screen (the screen is part of the aggregation rule, as Krum's selection is).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from federation.aggregation import aggregate_selected, flatten, outlier_stats, screen_outliers, unflatten
from federation.agreement import Agreement
from federation.codec import Arrays, arrays_sha256
from federation.contribution import (
    MEMBER_ERROR,
    NOT_SELECTED,
    OUTLIER,
    Accepted,
    Rejection,
    RoundContext,
    verify_round,
)
from federation.errors import BelowQuorum
from federation.manifest import GENESIS, build_manifest, manifest_link, sign_manifest, verify_chain
from protocol.envelope import Verifier
from protocol.identity import Identity

log = logging.getLogger(__name__)

MIN_TO_SCREEN = 3
"""Outlier screening needs at least this many contributions: with two, the median is their mean."""


@dataclass(frozen=True)
class RoundResult:
    """What one finished round produced."""

    round: int
    global_arrays: Arrays
    manifest: str
    """Signed manifest, canonical envelope JSON."""
    accepted: tuple[Accepted, ...]
    """The contributions aggregated."""
    rejected: tuple[Rejection, ...]
    """The replies left out, each with its reason (outliers and those Krum did not select included)."""
    valid: int
    """Contributions that verified, aggregated or not (what the quorum counts)."""


class FederationState:
    """The coordinator's running state: global arrays, chain, and the replay-protecting verifier."""

    def __init__(self, agreement: Agreement, coordinator: Identity, initial: Mapping[str, NDArray[np.floating]]) -> None:
        if coordinator.public_key_hex != agreement.coordinator:
            raise ValueError("this node is not the agreement's coordinator; run the round on the coordinator node")
        self.agreement = agreement
        self.coordinator = coordinator
        self.global_arrays: Arrays = {n: np.asarray(a, dtype=np.float32) for n, a in initial.items()}
        self.names = sorted(self.global_arrays)
        self.chain: list[str] = []
        self.round = 0
        # One verifier for the whole federation: a nonce replayed in any later round is refused.
        self.verifier = Verifier(set(agreement.members), max_age_s=max(3600.0, 4 * agreement.round_timeout_s))

    def restore(self, chain: Sequence[str], global_arrays: Mapping[str, NDArray[np.floating]]) -> None:
        """Continue after the rounds of `chain` (a coordinator restarting): the next round is len(chain) + 1.

        Raises `ChainBroken` naming the break when the chain does not verify against the agreement or
        `global_arrays` is not the last round's aggregate, and ValueError when the arrays do not have the
        federation's names and shapes. Nonces seen before the restart are forgotten; a replayed
        contribution still fails, since each one is signed for its round.
        """
        if self.round:
            raise ValueError(f"restore() on a state already at round {self.round}; restore a fresh state")
        arrays: Arrays = {n: np.asarray(a, dtype=np.float32) for n, a in global_arrays.items()}
        expected = {n: a.shape for n, a in self.global_arrays.items()}
        if {n: a.shape for n, a in arrays.items()} != expected:
            raise ValueError("the saved global arrays do not have the federation's tensor names and shapes")
        verify_chain(chain, self.agreement, final_sha256=arrays_sha256(arrays))
        self.chain, self.round, self.global_arrays = list(chain), len(chain), arrays
        log.info("resumed after round %d of %d", self.round, self.agreement.rounds)

    @property
    def prev_link(self) -> str:
        return manifest_link(self.chain[-1]) if self.chain else GENESIS

    def context(self, round: int) -> RoundContext:
        return RoundContext(self.agreement.federation_id, round, self.agreement.base_model_sha256,
                            {n: tuple(a.shape) for n, a in self.global_arrays.items()})

    def finish_round(self, replies: Sequence[tuple[str, Mapping[str, NDArray[np.floating]]]],
                     extra_rejections: Sequence[Rejection] = ()) -> RoundResult:
        """Verify, aggregate and sign round `self.round + 1` from its replies (envelope JSON, update arrays)."""
        r = self.round + 1
        a = self.agreement
        accepted, rejected = verify_round(list(replies), self.context(r), self.verifier)
        rejected = [*extra_rejections, *rejected]
        if len(accepted) < a.min_participants:
            reasons = "; ".join(f"{x.sender[:12] or '?'}: {x.reason}" + (f" ({x.detail})" if x.detail else "")
                                for x in rejected) or "no replies"
            fix = ("fix what the failing members report (their own logs say more) and run the federation again"
                   if any(x.reason == MEMBER_ERROR for x in rejected) else
                   "bring members back online and run the federation again")
            raise BelowQuorum(
                f"round {r}: {len(accepted)} valid contribution(s), fewer than min_participants = "
                f"{a.min_participants} ({reasons}); the round is aborted and the global model unchanged: {fix}"
            )
        valid = len(accepted)
        rows = np.stack([flatten(x.update, self.names) for x in accepted])  # (K, D)
        if a.screen_outliers and len(accepted) >= MIN_TO_SCREEN:
            keep = self._screen(r, accepted, rows, rejected)
            accepted, rows = [accepted[i] for i in keep], rows[keep]
        counts = np.array([x.num_examples for x in accepted], dtype=np.float64)  # (K,)
        delta, used = aggregate_selected(a.strategy, rows, counts, trim_fraction=a.trim_fraction,
                                         n_byzantine=a.n_byzantine, clip_norm=a.clip_norm or None)  # (D,)
        for i in sorted(set(range(len(accepted))) - set(used)):  # Krum's choice, on the record
            x = accepted[i]
            log.info("round %d: %s did not select the update from %s", r, a.strategy, x.sender[:16])
            rejected.append(Rejection(x.sender, NOT_SELECTED, f"update {x.update_sha256[:16]}...: not among the "
                                      f"{len(used)} {a.strategy} kept"))
        accepted = [accepted[i] for i in sorted(used)]
        new_global = unflatten(flatten(self.global_arrays, self.names) + delta, self.global_arrays, self.names)
        manifest = build_manifest(
            a, r, global_before_sha256=arrays_sha256(self.global_arrays), aggregate_sha256=arrays_sha256(new_global),
            prev_manifest_sha256=self.prev_link, accepted=accepted, rejected=rejected)
        signed = sign_manifest(self.coordinator, manifest)
        self.global_arrays, self.round = new_global, r
        self.chain.append(signed)
        log.info("round %d: aggregated %d contribution(s) with %s, rejected %d", r, len(accepted), a.strategy,
                 len(rejected))
        return RoundResult(r, new_global, signed, tuple(accepted), tuple(rejected), valid)

    def _screen(self, r: int, accepted: Sequence[Accepted], rows: NDArray[np.float64],
                rejected: list[Rejection]) -> list[int]:
        """Indices of the updates that pass the agreement's outlier screen; the others become rejections."""
        a = self.agreement
        ratio, cosine = outlier_stats(rows)
        for x, q, c in zip(accepted, ratio.tolist(), cosine.tolist(), strict=True):
            log.info("round %d: %s sent %d example(s), update norm %.2fx the median, cosine %.2f with the others' "
                     "median", r, x.sender[:16], x.num_examples, q, c)
        outliers = screen_outliers(rows, a.outlier_norm_ratio, a.outlier_min_cosine)
        if len(outliers) == len(accepted):
            raise BelowQuorum(
                f"round {r}: every one of the {len(accepted)} updates is an outlier by the agreement's limits "
                f"(outlier_norm_ratio {a.outlier_norm_ratio:g}, outlier_min_cosine {a.outlier_min_cosine:g}); "
                "the round is aborted and the global model unchanged: re-create the federation with looser "
                "limits (-1 turns the cosine check off)")
        for i, why in sorted(outliers.items()):
            x = accepted[i]
            log.warning("round %d: left out the update from %s: %s", r, x.sender[:16], why)
            rejected.append(Rejection(x.sender, OUTLIER, f"update {x.update_sha256[:16]}...: {why}"))
        return [i for i in range(len(accepted)) if i not in outliers]
