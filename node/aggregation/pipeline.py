"""One entry point: `aggregate` turns columnar votes and rankings into everything the node reports.

Stages, in order (each timed):

1. validate  - shapes, index ranges, one prompt per comparison / ranking, outcome codes.
2. pairs     - votes mapped onto unordered pairs (lo < hi) and tallied: soft labels p_lo
               (ties half, both_bad left out of p). With `rankings_as_votes`, a ranking
               o_1 > ... > o_k also counts as its k(k-1)/2 votes "o_i preferred to o_j" here and in
               stages 4-6 (it is one annotator's judgment of each of those pairs).
3. strengths - MAP Bradley-Terry on the comparisons + Plackett-Luce on the rankings (rankings enter
               the likelihood once, as rankings, never also as broken-up pairs), L2 prior `l2`.
4. alpha     - Krippendorff's alpha (nominal), units = pairs, values = canonical votes
               (lo / hi / tie / both_bad), overall and per source.
5. reliability - Dawid-Skene EM over the votes of known annotators (annotator >= 0) in classes
               lo / hi / tie (both_bad and unknown annotators left out).
6. ambiguity - low-agreement pairs, majority 3-cycles, both-bad majorities, by score.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from node.aggregation._arrays import (
    EMPTY_RANKINGS,
    FloatArray,
    check_column,
    check_comparisons,
    check_response_prompt,
    pack_rankings,
    rankings_as_comparisons,
)
from node.aggregation.agreement import (
    CANON_BOTH_BAD,
    CanonicalVotes,
    PairLabels,
    canonical_votes,
    pair_alpha,
    tally_pairs,
)
from node.aggregation.ambiguity import DEFAULT_LOW_AGREEMENT, AmbiguityQueue, ambiguity_queue
from node.aggregation.reliability import DEFAULT_SMOOTHING, DawidSkeneResult, dawid_skene
from node.aggregation.strengths import DEFAULT_L2, TieMode, build_problem, solve

UNKNOWN_ANNOTATOR = -1


@dataclass(frozen=True)
class AggregationResult:
    """Everything `aggregate` computes; arrays are read-only."""

    strengths: FloatArray  # (R,) MAP Bradley-Terry / Plackett-Luce strengths, mean 0 per prompt
    tie_log_nu: float | None  # Davidson's log nu (tie_mode="davidson"), else None
    strengths_converged: bool  # L-BFGS-B reported convergence
    strengths_iterations: int
    pairs: PairLabels  # (P,) columns: lo, hi, prompt, n_lo, n_hi, n_ties, n_both_bad, n_votes, p_lo
    alpha_overall: float  # Krippendorff's alpha (nominal) over pairs; nan when no pair has 2 votes
    alpha_by_source: dict[int, float]  # the same, each source's votes alone
    n_pairable_units: int  # pairs with >= 2 votes (the units alpha is computed over)
    reliability: DawidSkeneResult  # per annotator: reliability, n_labels, confusion; posterior (P, 3) per pair
    ambiguous: AmbiguityQueue  # (Q,) lo, hi, prompt, reason, score, sorted by score descending
    timings: dict[str, float]  # seconds per stage: validate, pairs, strengths, alpha, reliability, ambiguity, total


def aggregate(
    response_prompt: ArrayLike,
    a: ArrayLike = (),
    b: ArrayLike = (),
    outcome: ArrayLike = (),
    annotator: ArrayLike | None = None,
    source: ArrayLike | None = None,
    rankings: Sequence[ArrayLike] = (),
    ranking_annotator: ArrayLike | None = None,
    ranking_source: ArrayLike | None = None,
    *,
    l2: float = DEFAULT_L2,
    tie_mode: TieMode = "half",
    low_agreement: float = DEFAULT_LOW_AGREEMENT,
    rankings_as_votes: bool = True,
    smoothing: float = DEFAULT_SMOOTHING,
) -> AggregationResult:
    """Strengths, soft labels, Krippendorff's alpha, Dawid-Skene reliability and the ambiguity queue.

    Responses are 0..R-1 with prompts `response_prompt` (R,). Comparisons are (N,) columns: response
    indices a, b; outcome 0 = a preferred, 1 = b preferred, 2 = tie, 3 = both bad; annotator
    (-1 = unknown, the default) and source (default 0). Rankings list response indices best first,
    with one annotator and source each.

    >>> res = aggregate([0, 0, 0], a=[0, 0, 1, 0], b=[1, 1, 2, 2], outcome=[0, 0, 0, 2],
    ...                 annotator=[1, 2, 1, 2], rankings=[[0, 2, 1]], ranking_annotator=[3])
    >>> [round(float(s), 2) for s in res.strengths]
    [1.24, -0.85, -0.39]
    >>> res.pairs.lo.tolist(), res.pairs.hi.tolist(), res.pairs.p_lo.tolist()
    ([0, 0, 1], [1, 2, 2], [1.0, 0.75, 0.5])
    >>> res.n_pairable_units, res.reliability.annotators.tolist()
    (3, [1, 2, 3])
    """
    t_start = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(stage: str, since: float) -> float:
        now = time.perf_counter()
        timings[stage] = now - since
        return now

    # ---- 1. validate -------------------------------------------------------------------------
    rp = check_response_prompt(response_prompt)
    a_, b_, o_ = check_comparisons(rp, a, b, outcome)
    n = a_.size
    ann = check_column(annotator, n, "annotator", UNKNOWN_ANNOTATOR)
    src = check_column(source, n, "source", 0)
    packed = pack_rankings(rp, rankings) if len(rankings) else EMPTY_RANKINGS
    r_ann = check_column(ranking_annotator, len(rankings), "ranking_annotator", UNKNOWN_ANNOTATOR)
    r_src = check_column(ranking_source, len(rankings), "ranking_source", 0)
    t = lap("validate", t_start)

    # ---- 2. pairs: canonical votes and soft labels -------------------------------------------
    if rankings_as_votes and packed.n_rankings:
        ra, rb, ro, rann, rsrc = rankings_as_comparisons(packed, r_ann, r_src)
        a_, b_, o_ = np.concatenate([a_, ra]), np.concatenate([b_, rb]), np.concatenate([o_, ro])
        ann, src = np.concatenate([ann, rann]), np.concatenate([src, rsrc])
    votes = canonical_votes(rp.size, a_, b_, o_)  # rows 0..n-1 are the comparisons themselves
    pairs = tally_pairs(votes, rp)
    t = lap("pairs", t)

    # ---- 3. strengths: BT on comparisons + PL on rankings ------------------------------------
    comparisons_only = CanonicalVotes(pair=votes.pair[:n], value=votes.value[:n], lo=votes.lo, hi=votes.hi)
    bt_pairs = pairs if votes.pair.size == n else tally_pairs(comparisons_only, rp)
    fit = solve(build_problem(rp, bt_pairs, packed, l2=l2, tie_mode=tie_mode), rp)
    t = lap("strengths", t)

    # ---- 4. agreement ------------------------------------------------------------------------
    alpha_overall, alpha_by_source, n_pairable = pair_alpha(votes, src)
    t = lap("alpha", t)

    # ---- 5. annotator reliability ------------------------------------------------------------
    labeled = (ann >= 0) & (votes.value != CANON_BOTH_BAD)  # (N',) negative ids are unknown annotators
    reliability = dawid_skene(
        votes.pair[labeled], ann[labeled], votes.value[labeled],
        n_units=len(pairs), n_classes=3, smoothing=smoothing, symmetric_pair=True,
    )
    t = lap("reliability", t)

    # ---- 6. ambiguity queue ------------------------------------------------------------------
    queue = ambiguity_queue(pairs, low_agreement=low_agreement)
    t = lap("ambiguity", t)
    timings["total"] = t - t_start

    return AggregationResult(
        strengths=fit.strengths,
        tie_log_nu=fit.tie_log_nu,
        strengths_converged=fit.converged,
        strengths_iterations=fit.n_iter,
        pairs=pairs,
        alpha_overall=alpha_overall,
        alpha_by_source=alpha_by_source,
        n_pairable_units=n_pairable,
        reliability=reliability,
        ambiguous=queue,
        timings=timings,
    )


__all__ = ["UNKNOWN_ANNOTATOR", "AggregationResult", "aggregate"]
