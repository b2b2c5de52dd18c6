"""Per-pair soft labels and Krippendorff's alpha (nominal) over pairwise votes.

A vote on responses (a, b) is turned into its *canonical orientation* on the unordered pair
(lo, hi), lo < hi (response indices), so that "A preferred" on (7, 3) and "B preferred" on (3, 7)
are the same value:

    value = 0  lo preferred      1  hi preferred      2  tie      3  both bad

Soft label of a pair (ties count half each way, both_bad carries no order and is left out of p):

    p_lo = (n_lo + n_tie / 2) / (n_lo + n_hi + n_tie)            (nan when that is 0)

Krippendorff's alpha (nominal) via the coincidence matrix (Krippendorff 2011, "Computing
Krippendorff's Alpha-Reliability"), units = unordered pairs, values = canonical votes:

    o_ck = sum_u  (n_uc n_uk - [c = k] n_uc) / (m_u - 1)      over units with m_u >= 2 values
    n_c  = sum_k o_ck,   n = sum_c n_c
    alpha = 1 - D_o / D_e = ((n - 1) sum_c o_cc - sum_c n_c (n_c - 1)) / (n (n - 1) - sum_c n_c (n_c - 1))
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from node.aggregation._arrays import (
    N_OUTCOMES,
    TIE,
    AggregationInputError,
    FloatArray,
    IntArray,
    as_int_array,
    check_comparisons,
    check_response_prompt,
    readonly,
)

# Canonical values of a vote on the unordered pair (lo, hi).
LO_PREFERRED = 0
HI_PREFERRED = 1
CANON_TIE = 2
CANON_BOTH_BAD = 3
CANONICAL_VALUES = ("lo_preferred", "hi_preferred", "tie", "both_bad")


@dataclass(frozen=True)
class CanonicalVotes:
    """Comparisons mapped onto unordered pairs: vote i is `value[i]` on pair `pair[i]` = (lo, hi)."""

    pair: IntArray  # (N,) index into lo/hi
    value: IntArray  # (N,) canonical value 0..3
    lo: IntArray  # (P,) smaller response index of each distinct pair
    hi: IntArray  # (P,) larger response index, same prompt as lo


@dataclass(frozen=True)
class PairLabels:
    """Soft label and vote counts of every distinct unordered pair (lo < hi) that received a vote."""

    lo: IntArray  # (P,) response index
    hi: IntArray  # (P,) response index, lo < hi
    prompt: IntArray  # (P,) prompt of both responses
    n_lo: IntArray  # (P,) votes preferring lo
    n_hi: IntArray  # (P,) votes preferring hi
    n_ties: IntArray  # (P,)
    n_both_bad: IntArray  # (P,)
    n_votes: IntArray  # (P,) all votes, both_bad included
    p_lo: FloatArray  # (P,) (n_lo + n_ties / 2) / (n_lo + n_hi + n_ties); nan when only both_bad votes

    @property
    def n_ordered(self) -> IntArray:
        """(P,) votes that say something about the order: n_lo + n_hi + n_ties."""
        return self.n_votes - self.n_both_bad

    def __len__(self) -> int:
        return int(self.lo.size)


def canonical_votes(n_responses: int, a: IntArray, b: IntArray, outcome: IntArray) -> CanonicalVotes:
    """Map checked comparisons (a, b, outcome) onto unordered pairs (lo, hi) and canonical values."""
    swap = a > b  # (N,) the vote's A side is the pair's hi side
    lo = np.where(swap, b, a)  # (N,)
    hi = np.where(swap, a, b)  # (N,)
    # A preferred (0) / B preferred (1) flip when swapped; tie and both_bad are symmetric.
    ordered = outcome < TIE
    value = np.where(ordered & swap, 1 - outcome, outcome)  # (N,)
    n_responses = max(n_responses, 1)  # no responses means no votes; keeps // and % defined
    key = lo * np.int64(n_responses) + hi  # (N,) unique per unordered pair
    keys, pair = np.unique(key, return_inverse=True)  # (P,), (N,)
    return CanonicalVotes(
        pair=pair.astype(np.int64).ravel(),
        value=value.astype(np.int64),
        lo=keys // n_responses,
        hi=keys % n_responses,
    )


def tally_pairs(votes: CanonicalVotes, response_prompt: IntArray) -> PairLabels:
    """Count canonical votes per pair and form the soft labels p_lo (ties half, both_bad left out)."""
    p = votes.lo.size
    counts = np.bincount(votes.pair * N_OUTCOMES + votes.value, minlength=p * N_OUTCOMES)
    counts = counts.reshape(p, N_OUTCOMES)  # (P, 4) columns: lo, hi, tie, both_bad
    n_lo, n_hi, n_tie, n_bb = (counts[:, c].astype(np.int64) for c in range(N_OUTCOMES))
    n_ord = n_lo + n_hi + n_tie  # (P,)
    with np.errstate(invalid="ignore", divide="ignore"):
        p_lo = np.where(n_ord > 0, (n_lo + 0.5 * n_tie) / n_ord, np.nan)  # (P,)
    return PairLabels(
        lo=readonly(votes.lo),
        hi=readonly(votes.hi),
        prompt=readonly(response_prompt[votes.lo]),
        n_lo=readonly(n_lo),
        n_hi=readonly(n_hi),
        n_ties=readonly(n_tie),
        n_both_bad=readonly(n_bb),
        n_votes=readonly(n_ord + n_bb),
        p_lo=readonly(p_lo),
    )


def pair_labels(response_prompt: ArrayLike, a: ArrayLike, b: ArrayLike, outcome: ArrayLike) -> PairLabels:
    """Soft label p_lo and vote counts for every unordered pair that has at least one vote.

    >>> pl = pair_labels([0, 0], a=[0, 1, 0, 1], b=[1, 0, 1, 0], outcome=[0, 0, 2, 3])
    >>> (int(pl.lo[0]), int(pl.hi[0]), float(pl.p_lo[0]), int(pl.n_votes[0]), int(pl.n_both_bad[0]))
    (0, 1, 0.5, 4, 1)
    """
    rp = check_response_prompt(response_prompt)
    a_, b_, o_ = check_comparisons(rp, a, b, outcome)
    return tally_pairs(canonical_votes(rp.size, a_, b_, o_), rp)


def krippendorff_alpha_nominal(units: ArrayLike, values: ArrayLike) -> float:
    """Krippendorff's alpha for nominal data; row i says "some coder gave `values[i]` to `units[i]`".

    Units with fewer than 2 values are not pairable and are ignored. Returns nan when no unit is
    pairable, or when every pairable value is the same category (expected disagreement D_e = 0:
    alpha is undefined, Krippendorff 2011, sec. "Cases with D_e = 0").

    >>> krippendorff_alpha_nominal(units=[0, 0, 1, 1, 2, 2], values=[1, 1, 2, 2, 1, 1])
    1.0
    >>> krippendorff_alpha_nominal(units=[0, 0, 1, 1], values=[1, 2, 1, 2])
    -0.5
    """
    u_raw = as_int_array(units, "units")
    v_raw = as_int_array(values, "values")
    if u_raw.size != v_raw.size:
        raise AggregationInputError(
            f"units has {u_raw.size} rows but values has {v_raw.size}; pass one unit per value"
        )
    if u_raw.size == 0:
        return float("nan")
    _, u = np.unique(u_raw, return_inverse=True)  # (M,) dense unit ids 0..U-1
    cats, v = np.unique(v_raw, return_inverse=True)  # (M,) dense category ids 0..C-1
    u, v = u.ravel(), v.ravel()
    n_units, n_cats = int(u.max()) + 1, cats.size
    return _alpha_from_counts(
        np.bincount(u * n_cats + v, minlength=n_units * n_cats).reshape(n_units, n_cats)
    )[0]


def _alpha_from_counts(n_uc: IntArray, *, symmetric_pair: bool = False) -> tuple[float, int]:
    """Alpha (nominal) and the number of pairable units, from the (U, C) value counts per unit.

    `symmetric_pair`: the units are unordered pairs with values (lo, hi, tie, both_bad). Which side
    is "lo" is an accident of indexing, yet expected disagreement comes from the pooled value
    marginals: were lo the preferred side of most pairs, chance agreement would look high and alpha
    collapse toward 0 on sensible labels. So the lo and hi marginals are pooled and split evenly, as
    if every pair were seen in both orientations; observed disagreement does not depend on it.
    """
    m_u = n_uc.sum(axis=1)  # (U,) values per unit
    pairable = m_u >= 2
    n_pairable = int(pairable.sum())
    if n_pairable == 0:
        return float("nan"), 0
    nu = n_uc[pairable].astype(np.float64)  # (U', C)
    w = 1.0 / (m_u[pairable] - 1.0)  # (U',) each unit's pairs weigh 1 / (m_u - 1)
    # o_ck = sum_u (n_uc n_uk - [c = k] n_uc) / (m_u - 1)
    o = (nu * w[:, None]).T @ nu - np.diag(w @ nu)  # (C, C) coincidence matrix
    n_c = o.sum(axis=1)  # (C,)
    if symmetric_pair:
        n_c = n_c.copy()
        n_c[:2] = n_c[:2].sum() / 2.0
    n = n_c.sum()
    expected = n * (n - 1.0) - np.sum(n_c * (n_c - 1.0))  # proportional to D_e
    if expected <= 0.0:
        return float("nan"), n_pairable
    observed_agree = (n - 1.0) * np.trace(o) - np.sum(n_c * (n_c - 1.0))
    return float(observed_agree / expected), n_pairable


def pair_alpha(votes: CanonicalVotes, source: IntArray) -> tuple[float, dict[int, float], int]:
    """Alpha (nominal) over pairs: overall, per source (only that source's votes), pairable units overall.

    Units are unordered pairs and values the canonical vote (lo / hi / tie / both_bad); one
    annotator voting twice on a pair gives two values, as two coders would. The result does not
    depend on which response of a pair is lo (see `_alpha_from_counts`).
    """
    p = votes.lo.size
    counts = np.bincount(votes.pair * N_OUTCOMES + votes.value, minlength=p * N_OUTCOMES)
    overall, n_pairable = _alpha_from_counts(counts.reshape(p, N_OUTCOMES), symmetric_pair=True)
    by_source: dict[int, float] = {}
    if source.size:
        order = np.argsort(source, kind="stable")  # group votes by source once
        srcs, starts = np.unique(source[order], return_index=True)
        ends = np.append(starts[1:], order.size)
        for s, lo_, hi_ in zip(srcs.tolist(), starts.tolist(), ends.tolist(), strict=True):
            rows = order[lo_:hi_]
            # Only pairs this source voted on: re-index them densely to keep the (U, 4) table small.
            pairs, dense = np.unique(votes.pair[rows], return_inverse=True)
            c = np.bincount(dense.ravel() * N_OUTCOMES + votes.value[rows], minlength=pairs.size * N_OUTCOMES)
            by_source[int(s)] = _alpha_from_counts(c.reshape(pairs.size, N_OUTCOMES), symmetric_pair=True)[0]
    return overall, by_source, n_pairable


__all__ = [
    "CANONICAL_VALUES",
    "CanonicalVotes",
    "PairLabels",
    "canonical_votes",
    "krippendorff_alpha_nominal",
    "pair_alpha",
    "pair_labels",
    "tally_pairs",
]
