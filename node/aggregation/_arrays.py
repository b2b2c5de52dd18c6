"""Input checks and array plumbing shared by the aggregation modules (private).

Every check is vectorized: the inputs are columnar arrays of up to millions of rows, and a bad row
raises `AggregationInputError` (a `ValueError`) naming the first offending row and the fix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

# Outcome codes of a pairwise comparison (a, b), as stored by the node.
A_PREFERRED = 0
B_PREFERRED = 1
TIE = 2
BOTH_BAD = 3
N_OUTCOMES = 4

IntArray = NDArray[np.int64]
_A = TypeVar("_A", bound=np.ndarray)
FloatArray = NDArray[np.float64]


class AggregationInputError(ValueError):
    """Aggregation inputs are inconsistent (shapes, indices, codes); the message says which row."""


def as_int_array(x: ArrayLike, name: str) -> IntArray:
    """`x` as a 1-D int64 array, or AggregationInputError saying why it is not one."""
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise AggregationInputError(f"{name} must be 1-D, got shape {arr.shape}; pass one value per row")
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating) and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            return arr.astype(np.int64)
        raise AggregationInputError(f"{name} must hold integers, got dtype {arr.dtype}; map ids to ints first")
    return arr.astype(np.int64, copy=False)


def _first_bad(mask: NDArray[np.bool_]) -> int:
    return int(np.flatnonzero(mask)[0])


def check_response_prompt(response_prompt: ArrayLike) -> IntArray:
    """The (R,) prompt id of every response, checked."""
    rp = as_int_array(response_prompt, "response_prompt")
    if rp.size and rp.min() < 0:
        i = _first_bad(rp < 0)
        raise AggregationInputError(f"response_prompt[{i}] = {rp[i]} is negative; prompt ids must be >= 0")
    return rp


def check_column(x: ArrayLike | None, n: int, name: str, default: int) -> IntArray:
    """An optional (n,) int column; `None` means `default` for every row."""
    if x is None:
        return np.full(n, default, dtype=np.int64)
    arr = as_int_array(x, name)
    if arr.shape != (n,):
        raise AggregationInputError(f"{name} has {arr.size} rows but there are {n}; pass one value per row")
    return arr


def check_comparisons(
    response_prompt: IntArray, a: ArrayLike, b: ArrayLike, outcome: ArrayLike
) -> tuple[IntArray, IntArray, IntArray]:
    """(N,) a, b, outcome checked: indices in range, a != b, same prompt, codes in 0..3."""
    a_ = as_int_array(a, "a")
    b_ = as_int_array(b, "b")
    o_ = as_int_array(outcome, "outcome")
    n = a_.size
    if b_.size != n or o_.size != n:
        raise AggregationInputError(
            f"a, b and outcome have {a_.size}, {b_.size}, {o_.size} rows; pass one value per comparison in each"
        )
    r = response_prompt.size
    for name, idx in (("a", a_), ("b", b_)):
        bad = (idx < 0) | (idx >= r)
        if bad.any():
            i = _first_bad(bad)
            raise AggregationInputError(
                f"{name}[{i}] = {idx[i]} is not a response index in 0..{r - 1}; index into response_prompt"
            )
    bad = a_ == b_
    if bad.any():
        i = _first_bad(bad)
        raise AggregationInputError(f"comparison {i} compares response {a_[i]} with itself; drop it")
    bad = response_prompt[a_] != response_prompt[b_]
    if bad.any():
        i = _first_bad(bad)
        raise AggregationInputError(
            f"comparison {i} pairs responses {a_[i]} and {b_[i]} of different prompts "
            f"({response_prompt[a_[i]]} and {response_prompt[b_[i]]}); only compare answers to the same prompt"
        )
    bad = (o_ < 0) | (o_ >= N_OUTCOMES)
    if bad.any():
        i = _first_bad(bad)
        raise AggregationInputError(
            f"outcome[{i}] = {o_[i]} is not a code 0=A, 1=B, 2=tie, 3=both_bad; map outcomes to these codes"
        )
    return a_, b_, o_


@dataclass(frozen=True)
class PackedRankings:
    """Rankings grouped by length: `orders[k]` is an (m_k, k) matrix of response indices, best first.

    `rows[k]` (m_k,) gives each matrix row's position in the caller's list of rankings.
    """

    orders: dict[int, IntArray]
    rows: dict[int, IntArray]

    @property
    def n_rankings(self) -> int:
        return sum(r.size for r in self.rows.values())


EMPTY_RANKINGS = PackedRankings(orders={}, rows={})


def pack_rankings(response_prompt: IntArray, rankings: Sequence[ArrayLike]) -> PackedRankings:
    """Group rankings by length into one (m_k, k) matrix per length k, checking each ranking.

    A ranking is valid when it has >= 2 distinct response indices, all of the same prompt.
    """
    if len(rankings) == 0:
        return EMPTY_RANKINGS
    arrays = [np.asarray(r) for r in rankings]
    lengths = np.fromiter((x.size for x in arrays), dtype=np.int64, count=len(arrays))  # (Q,)
    for q, x in enumerate(arrays):
        if x.ndim != 1:
            raise AggregationInputError(f"ranking {q} has shape {x.shape}; pass a 1-D list of response indices")
    bad = lengths < 2
    if bad.any():
        q = _first_bad(bad)
        raise AggregationInputError(f"ranking {q} has {lengths[q]} responses; a ranking needs at least 2")
    flat = as_int_array(np.concatenate(arrays), "rankings")  # (sum k,)
    r = response_prompt.size
    bad_idx = (flat < 0) | (flat >= r)
    owner = np.repeat(np.arange(len(arrays)), lengths)  # (sum k,) ranking of each entry
    if bad_idx.any():
        i = _first_bad(bad_idx)
        raise AggregationInputError(
            f"ranking {owner[i]} holds {flat[i]}, not a response index in 0..{r - 1}; index into response_prompt"
        )
    starts = np.cumsum(lengths) - lengths  # (Q,)
    prompt = response_prompt[flat]
    bad_prompt = prompt != prompt[starts][owner]
    if bad_prompt.any():
        q = int(owner[_first_bad(bad_prompt)])
        raise AggregationInputError(f"ranking {q} mixes responses of different prompts; rank answers to one prompt")
    orders: dict[int, IntArray] = {}
    rows: dict[int, IntArray] = {}
    for k in np.unique(lengths).tolist():
        sel = np.flatnonzero(lengths == k)  # (m_k,)
        mat = flat[starts[sel][:, None] + np.arange(k)[None, :]]  # (m_k, k)
        srt = np.sort(mat, axis=1)
        dup = (srt[:, 1:] == srt[:, :-1]).any(axis=1)  # (m_k,)
        if dup.any():
            raise AggregationInputError(
                f"ranking {sel[_first_bad(dup)]} lists a response twice; each response appears once per ranking"
            )
        orders[int(k)] = mat
        rows[int(k)] = sel
    return PackedRankings(orders=orders, rows=rows)


def rankings_as_comparisons(
    packed: PackedRankings, annotator: IntArray, source: IntArray
) -> tuple[IntArray, IntArray, IntArray, IntArray, IntArray]:
    """Break every ranking o_1 > ... > o_k into its k(k-1)/2 implied votes "o_i preferred to o_j", i < j.

    Returns (a, b, outcome, annotator, source), each (sum_k m_k k(k-1)/2,); outcome is always A_PREFERRED.
    """
    parts: list[tuple[IntArray, IntArray, IntArray, IntArray]] = []
    for k, mat in packed.orders.items():
        i, j = np.triu_indices(k, 1)  # (k(k-1)/2,) each, i < j
        rows = packed.rows[k]
        parts.append(
            (
                mat[:, i].ravel(),  # (m_k * k(k-1)/2,) winners
                mat[:, j].ravel(),  # losers
                np.repeat(annotator[rows], i.size),
                np.repeat(source[rows], i.size),
            )
        )
    if not parts:
        z = np.zeros(0, dtype=np.int64)
        return z, z, z, z, z
    a = np.concatenate([p[0] for p in parts])
    b = np.concatenate([p[1] for p in parts])
    ann = np.concatenate([p[2] for p in parts])
    src = np.concatenate([p[3] for p in parts])
    return a, b, np.full(a.size, A_PREFERRED, dtype=np.int64), ann, src


def readonly(x: _A) -> _A:
    """Mark an array read-only so a frozen result cannot be mutated through it."""
    x.flags.writeable = False
    return x
