"""The ambiguity queue: pairs a human should look at again, most urgent first.

Three reasons, each with a score in [0, 1]:

- "low_agreement": at least `min_votes` ordered votes and the most common of the three outcomes
  lo / hi / tie holds less than `low_agreement` of them, s_1 < low_agreement, where s_1 >= s_2 >= s_3
  are the shares of lo, hi and tie votes sorted; score = 1 - (s_1 - s_2), how close the runner-up
  outcome comes (1 for a 50/50 split; without ties s_1 - s_2 = |2 p_lo - 1|). Agreement is measured
  on the votes, not on p_lo: labelers who all call a pair a tie agree (p_lo = 1/2, but s_1 = 1),
  and a 50/50 split between lo and hi does not.
- "cycle": within a prompt the majority preferences form a directed 3-cycle x > y > z > x
  (an edge winner -> loser for every pair with p_lo != 1/2). Every pair of the cycle is reported;
  score = the cycle's weakest margin, min over its 3 edges of |2 p_lo - 1| (how sure the votes
  are that the intransitivity is real); a pair in several cycles keeps its highest score.
- "both_bad": a strict majority of all votes on the pair say both responses are bad: the prompt
  needs a new response. score = n_both_bad / n_votes.

A pair can appear once per reason. Items are sorted by score descending (ties: reason, lo, hi).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from node.aggregation._arrays import AggregationInputError, FloatArray, IntArray, readonly
from node.aggregation.agreement import PairLabels

REASONS = ("low_agreement", "cycle", "both_bad")
LOW_AGREEMENT, CYCLE, BOTH_BAD_MAJORITY = 0, 1, 2
DEFAULT_LOW_AGREEMENT = 0.7


@dataclass(frozen=True)
class AmbiguousItem:
    """One entry of the queue."""

    lo: int
    hi: int
    prompt: int
    reason: str  # one of REASONS
    score: float


@dataclass(frozen=True)
class AmbiguityQueue:
    """The queue as columns, sorted by score descending; `items()` gives it row by row."""

    lo: IntArray  # (Q,)
    hi: IntArray  # (Q,)
    prompt: IntArray  # (Q,)
    reason: IntArray  # (Q,) index into REASONS
    score: FloatArray  # (Q,) in [0, 1]

    def __len__(self) -> int:
        return int(self.lo.size)

    def items(self) -> list[AmbiguousItem]:
        """The queue as a list of `AmbiguousItem`, in order."""
        return [
            AmbiguousItem(lo=int(lo), hi=int(hi), prompt=int(p), reason=REASONS[r], score=float(s))
            for lo, hi, p, r, s in zip(
                self.lo.tolist(), self.hi.tolist(), self.prompt.tolist(), self.reason.tolist(),
                self.score.tolist(), strict=True,
            )
        ]


def three_cycles(src: IntArray, dst: IntArray) -> IntArray:
    """(C, 3) directed 3-cycles x -> y -> z -> x of the graph with edges src[e] -> dst[e].

    Each cycle is listed once, starting at its smallest vertex. Vectorized over all prompts at once:
    every edge (x, y) with x < y is extended by every out-edge (y, z) with z > x, and the path is
    kept when the closing edge (z, x) exists (looked up by binary search on sorted edge keys).
    """
    if src.size < 3:
        return np.zeros((0, 3), dtype=np.int64)
    n = int(max(src.max(), dst.max())) + 1
    order = np.argsort(src, kind="stable")
    s_src, s_dst = src[order], dst[order]  # (E,) edges sorted by source
    out_start = np.searchsorted(s_src, np.arange(n + 1))  # (n + 1,) out-edges of v: out_start[v]:out_start[v+1]
    keys = np.sort(src * np.int64(n) + dst)  # (E,) for edge-existence lookups

    first = np.flatnonzero(s_src < s_dst)  # (E1,) x -> y with x < y: x may be the cycle's smallest vertex
    x, y = s_src[first], s_dst[first]
    deg = out_start[y + 1] - out_start[y]  # (E1,) number of ways to extend x -> y -> z
    total = int(deg.sum())
    if total == 0:
        return np.zeros((0, 3), dtype=np.int64)
    # Expand each x -> y into its deg(y) two-paths x -> y -> z without a Python loop.
    rep = np.repeat(np.arange(first.size), deg)  # (T,) which x -> y
    offset = np.arange(total) - np.repeat(np.cumsum(deg) - deg, deg)  # (T,) 0..deg-1 within the group
    z = s_dst[out_start[y[rep]] + offset]  # (T,)
    x2, y2 = x[rep], y[rep]
    keep = z > x2  # x is the smallest vertex (z != x since z > x)
    x2, y2, z = x2[keep], y2[keep], z[keep]
    closing = z * np.int64(n) + x2  # (T',) key of z -> x
    pos = np.minimum(np.searchsorted(keys, closing), keys.size - 1)
    found = keys[pos] == closing
    return np.stack([x2[found], y2[found], z[found]], axis=1)


def ambiguity_queue(
    pairs: PairLabels, *, low_agreement: float = DEFAULT_LOW_AGREEMENT, min_votes: int = 2
) -> AmbiguityQueue:
    """Pairs with low agreement, in a majority 3-cycle, or voted both bad, sorted by score descending.

    >>> from node.aggregation.agreement import pair_labels
    >>> q = ambiguity_queue(pair_labels([0, 0, 0], a=[0, 0, 1, 1, 2], b=[1, 1, 2, 2, 0], outcome=[0, 1, 0, 0, 0]))
    >>> [(i.lo, i.hi, i.reason, round(i.score, 2)) for i in q.items()]
    [(0, 1, 'low_agreement', 1.0)]
    """
    if not 0.5 < low_agreement <= 1.0:
        raise AggregationInputError(
            f"low_agreement = {low_agreement} must be in (0.5, 1]; it is the share of the most common vote "
            f"below which a pair is ambiguous (default {DEFAULT_LOW_AGREEMENT})"
        )
    if min_votes < 1:
        raise AggregationInputError(f"min_votes = {min_votes} must be >= 1")
    p = pairs.p_lo  # (P,)
    margin = np.abs(2.0 * p - 1.0)  # (P,) nan where there are only both_bad votes
    n_ord = pairs.n_ordered

    # low agreement on the vote distribution: the modal outcome's share s_1 < threshold
    counts = np.sort(np.stack([pairs.n_lo, pairs.n_hi, pairs.n_ties], axis=1), axis=1)  # (P, 3) ascending
    with np.errstate(invalid="ignore", divide="ignore"):
        shares = counts / n_ord[:, None]  # (P, 3) nan rows where there are only both_bad votes
    low = np.flatnonzero((n_ord >= min_votes) & (n_ord > 0) & (shares[:, 2] < low_agreement))
    low_score = 1.0 - (shares[low, 2] - shares[low, 1])  # 1 - (s_1 - s_2)

    # both bad: strict majority of all votes
    bb = np.flatnonzero(2 * pairs.n_both_bad > pairs.n_votes)
    bb_score = pairs.n_both_bad[bb] / pairs.n_votes[bb]

    # cycles in the majority graph, edges winner -> loser
    with np.errstate(invalid="ignore"):
        lo_wins, hi_wins = p > 0.5, p < 0.5  # nan compares False: no edge
    edge_pair = np.concatenate([np.flatnonzero(lo_wins), np.flatnonzero(hi_wins)])  # (E,) pair of each edge
    src = np.concatenate([pairs.lo[lo_wins], pairs.hi[hi_wins]])
    dst = np.concatenate([pairs.hi[lo_wins], pairs.lo[hi_wins]])
    cyc_pairs, cyc_score = _cycle_pairs(three_cycles(src, dst), pairs, edge_pair, src, dst, margin)

    reason = np.concatenate([
        np.full(low.size, LOW_AGREEMENT), np.full(cyc_pairs.size, CYCLE), np.full(bb.size, BOTH_BAD_MAJORITY)
    ]).astype(np.int64)
    which = np.concatenate([low, cyc_pairs, bb]).astype(np.int64)  # (Q,) pair index
    score = np.concatenate([low_score, cyc_score, bb_score]).astype(np.float64)
    lo, hi = pairs.lo[which], pairs.hi[which]
    order = np.lexsort((hi, lo, reason, -score))  # last key is primary
    return AmbiguityQueue(
        lo=readonly(lo[order]),
        hi=readonly(hi[order]),
        prompt=readonly(pairs.prompt[which][order]),
        reason=readonly(reason[order]),
        score=readonly(score[order]),
    )


def _cycle_pairs(
    cycles: IntArray, pairs: PairLabels, edge_pair: IntArray, src: IntArray, dst: IntArray, margin: FloatArray
) -> tuple[IntArray, FloatArray]:
    """Distinct pairs on any 3-cycle (C, 3), each with its best cycle's weakest margin."""
    if cycles.shape[0] == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    n = int(max(src.max(), dst.max())) + 1
    key = src * np.int64(n) + dst  # (E,)
    order = np.argsort(key)
    sorted_key = key[order]
    # the 3 edges x -> y, y -> z, z -> x of every cycle, as pair indices
    e_src = cycles  # (C, 3)
    e_dst = np.roll(cycles, -1, axis=1)  # (C, 3)
    e = order[np.searchsorted(sorted_key, e_src * np.int64(n) + e_dst)]  # (C, 3) edge index
    cp = edge_pair[e]  # (C, 3) pair index
    weakest = margin[cp].min(axis=1)  # (C,)
    flat_pair = cp.ravel()  # (3C,)
    flat_score = np.repeat(weakest, 3)
    # pairs on several cycles keep their best score: sort by (pair, score), take each group's last
    o = np.lexsort((flat_score, flat_pair))
    fp, fs = flat_pair[o], flat_score[o]
    last = np.append(fp[1:] != fp[:-1], True)
    return fp[last], fs[last]


__all__ = [
    "DEFAULT_LOW_AGREEMENT",
    "REASONS",
    "AmbiguityQueue",
    "AmbiguousItem",
    "ambiguity_queue",
    "three_cycles",
]
