"""Robust aggregation of model updates: pure numpy functions of a (K, D) matrix and weights.

Each row of `updates` is one client's flattened update (its local weights minus the global ones);
`weights` are example counts. Every rule returns the aggregated (D,) update. Use `flatten` /
`unflatten` to go between named arrays and rows.

>>> import numpy as np
>>> u = np.array([[1.0, 0.0], [3.0, 2.0], [100.0, -50.0]])
>>> fedavg(u[:2], np.array([1.0, 3.0])).tolist()
[2.5, 1.5]
>>> coordinate_median(u).tolist()
[3.0, 0.0]
>>> trimmed_mean(u, trim_fraction=1 / 3).tolist()
[3.0, 0.0]
>>> krum(u, n_byzantine=0).tolist() in ([1.0, 0.0], [3.0, 2.0])
True
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import NDArray

Matrix = NDArray[np.float64]
Vector = NDArray[np.float64]

STRATEGIES = ("fedavg", "median", "trimmed-mean", "krum")
"""The aggregation rules a federation agreement can name."""
MIN_FOR_COSINE = 4
"""`screen_outliers` compares directions only from this many rows: the others' median must be one that a
single hostile row cannot own."""


def _check(updates: NDArray[np.floating], weights: NDArray[np.floating] | None = None) -> Matrix:
    u = np.asarray(updates, dtype=np.float64)
    if u.ndim != 2 or u.shape[0] == 0:
        raise ValueError(f"updates must be a non-empty (K, D) matrix, got shape {u.shape}; stack one row per client")
    if not np.isfinite(u).all():
        raise ValueError("updates hold NaN or Inf; drop those clients before aggregating")
    if weights is not None:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (u.shape[0],) or (w < 0).any() or w.sum() <= 0:
            raise ValueError(
                f"weights must be K={u.shape[0]} non-negative numbers with a positive sum, got {w.tolist()}; "
                "pass each client's example count"
            )
    return u


def fedavg(updates: NDArray[np.floating], weights: NDArray[np.floating]) -> Vector:
    """Example-weighted mean: sum_k n_k u_k / sum_k n_k (McMahan et al. 2017).

    >>> fedavg(np.array([[0.0], [4.0]]), np.array([3.0, 1.0])).tolist()
    [1.0]
    """
    u = _check(updates, weights)
    w = np.asarray(weights, dtype=np.float64)
    out: Vector = (w[:, None] * u).sum(axis=0) / w.sum()  # (D,)
    return out


def coordinate_median(updates: NDArray[np.floating]) -> Vector:
    """Coordinate-wise median (Yin et al. 2018); ignores example counts by design.

    >>> coordinate_median(np.array([[1.0], [2.0], [9.0], [10.0]])).tolist()
    [5.5]
    """
    out: Vector = np.median(_check(updates), axis=0)
    return out


def trimmed_mean(updates: NDArray[np.floating], trim_fraction: float = 0.2) -> Vector:
    """Coordinate-wise trimmed mean: drop the b largest and smallest values per coordinate, b = floor(beta K),
    but at least 1 from 3 rows up when beta > 0 (floor(0.2 K) is 0 for K <= 4: a trimmed mean that trims
    nothing would be FedAvg without its weights, and one member could drag it anywhere).

    >>> trimmed_mean(np.array([[-100.0], [1.0], [2.0], [3.0], [100.0]]), 0.2).tolist()
    [2.0]
    >>> trimmed_mean(np.array([[1.0], [2.0], [300.0]]), 0.2).tolist()
    [2.0]
    """
    u = _check(updates)
    if not 0.0 <= trim_fraction < 0.5:
        raise ValueError(f"trim_fraction must be in [0, 0.5), got {trim_fraction}; 0.2 trims a fifth on each side")
    k = u.shape[0]
    b = int(math.floor(trim_fraction * k))
    if trim_fraction > 0 and k >= 3:
        b = max(b, 1)
    s = np.sort(u, axis=0)  # (K, D), each column sorted
    out: Vector = s[b: k - b].mean(axis=0)
    return out


def krum_scores(updates: NDArray[np.floating], n_byzantine: int) -> Vector:
    """Krum score of each row: the sum of squared distances to its K - f - 2 nearest other rows."""
    u = _check(updates)
    k = u.shape[0]
    if n_byzantine < 0:
        raise ValueError(f"n_byzantine must be >= 0, got {n_byzantine}")
    m = max(k - n_byzantine - 2, 1)
    sq = (u * u).sum(axis=1)  # (K,)
    d = np.maximum(sq[:, None] + sq[None, :] - 2.0 * u @ u.T, 0.0)  # (K, K) squared distances
    np.fill_diagonal(d, np.inf)
    nearest = np.sort(d, axis=1)[:, : min(m, k - 1)] if k > 1 else np.zeros((1, 1))
    out: Vector = nearest.sum(axis=1)
    return out


def multi_krum(updates: NDArray[np.floating], n_byzantine: int, n_selected: int) -> tuple[Vector, list[int]]:
    """Multi-Krum (Blanchard et al. 2017): mean of the n_selected rows with the lowest Krum scores.

    Returns the aggregate and the selected row indices (sorted by score, best first).
    """
    u = _check(updates)
    if not 1 <= n_selected <= u.shape[0]:
        raise ValueError(f"n_selected must be in [1, K={u.shape[0]}], got {n_selected}")
    order = [int(i) for i in np.argsort(krum_scores(u, n_byzantine), kind="stable")[:n_selected]]
    out: Vector = u[order].mean(axis=0)
    return out, order


def krum(updates: NDArray[np.floating], n_byzantine: int) -> Vector:
    """Krum: the single row with the lowest score (Multi-Krum with one row selected)."""
    return multi_krum(updates, n_byzantine, 1)[0]


def outlier_stats(updates: NDArray[np.floating]) -> tuple[Vector, Vector]:
    """Per row: its L2 norm over the median row norm, and its cosine with the coordinate-wise median of
    the *other* rows.

    Both references are medians, so a minority of hostile rows cannot move them far, and a row is never
    compared with a reference it helped make: in high dimension, noisy updates are nearly orthogonal to
    each other, yet each correlates with the median of all rows through the order statistics it takes
    part in (a negated update included). A row scaled x100 has a norm ratio near 100; a negated row, a
    cosine near minus that of the honest rows. Zero rows get ratio 0 and cosine 0; a single row, cosine 0.

    >>> ratio, cosine = outlier_stats(np.array([[1.0, 0.0], [1.0, 0.2], [0.9, -0.1], [-50.0, 0.0]]))
    >>> ratio.round(2).tolist(), cosine.round(2).tolist()
    ([0.99, 1.01, 0.9, 49.51], [1.0, 0.98, 0.99, -1.0])
    """
    u = _check(updates)
    norms = np.linalg.norm(u, axis=1)  # (K,)
    median_norm = float(np.median(norms))
    ratio: Vector = norms / median_norm if median_norm > 0 else np.zeros_like(norms)
    cosine: Vector = np.zeros_like(norms)
    for i in range(u.shape[0] if u.shape[0] > 1 else 0):
        others = np.median(np.delete(u, i, axis=0), axis=0)  # (D,)
        denom = norms[i] * float(np.linalg.norm(others))
        cosine[i] = float(u[i] @ others) / denom if denom > 0 else 0.0
    return ratio, cosine


def screen_outliers(updates: NDArray[np.floating], max_norm_ratio: float, min_cosine: float) -> dict[int, str]:
    """Rows to leave out of the round, each with the reason: an L2 norm above `max_norm_ratio` x the
    median norm, or a cosine with the coordinate-wise median of the other rows below `min_cosine`
    (`outlier_stats`). The cosine test needs at least `MIN_FOR_COSINE` rows: with three, the others'
    median is the mean of two, which one hostile row can own.

    >>> screen_outliers(np.array([[1.0, 0.0], [1.0, 0.2], [0.9, -0.1], [-50.0, 0.0]]), 3.0, -0.5)
    {3: 'norm 49.5x the median (limit 3x); cosine with the median of the others -1.00 (limit -0.5)'}
    """
    if not max_norm_ratio > 1:
        raise ValueError(f"max_norm_ratio must be > 1, got {max_norm_ratio}; 3 leaves out norms over 3x the median")
    if not -1.0 <= min_cosine < 1.0:
        raise ValueError(f"min_cosine must lie in [-1, 1), got {min_cosine}; -0.5 leaves out updates against "
                         "the others")
    ratio, cosine = outlier_stats(updates)
    check_cosine = len(ratio) >= MIN_FOR_COSINE
    out: dict[int, str] = {}
    for i, (r, c) in enumerate(zip(ratio.tolist(), cosine.tolist(), strict=True)):
        why = ([f"norm {r:.1f}x the median (limit {max_norm_ratio:g}x)"] if r > max_norm_ratio else []) + (
            [f"cosine with the median of the others {c:.2f} (limit {min_cosine:g})"]
            if check_cosine and c < min_cosine else [])
        if why:
            out[i] = "; ".join(why)
    return out


def clip_by_norm(update: NDArray[np.floating], max_norm: float) -> Vector:
    """u * min(1, C / ||u||_2): the update with its L2 norm capped at C.

    >>> clip_by_norm(np.array([3.0, 4.0]), 1.0).round(6).tolist()
    [0.6, 0.8]
    """
    if not max_norm > 0:
        raise ValueError(f"max_norm must be > 0, got {max_norm}")
    u = np.asarray(update, dtype=np.float64)
    norm = float(np.linalg.norm(u))
    out: Vector = u * min(1.0, max_norm / norm) if norm > 0 else u.copy()
    return out


def clip_rows(updates: NDArray[np.floating], max_norm: float) -> Matrix:
    """Clip each row to L2 norm <= max_norm (server-side norm bounding)."""
    u = _check(updates)
    out: Matrix = np.stack([clip_by_norm(row, max_norm) for row in u])
    return out


def dp_privatize(update: NDArray[np.floating], clip_norm: float, noise_multiplier: float,
                 rng: np.random.Generator) -> Vector:
    """Client-side DP (local Gaussian mechanism): clip to C, then add N(0, (sigma C)^2) per coordinate."""
    if noise_multiplier < 0:
        raise ValueError(f"noise_multiplier must be >= 0, got {noise_multiplier}")
    clipped = clip_by_norm(update, clip_norm)
    out: Vector = clipped + rng.normal(0.0, noise_multiplier * clip_norm, size=clipped.shape)
    return out


def aggregate(strategy: str, updates: NDArray[np.floating], weights: NDArray[np.floating], *,
              trim_fraction: float = 0.2, n_byzantine: int = 1, clip_norm: float | None = None) -> Vector:
    """Dispatch to a rule by its agreement name; clip rows first when clip_norm is set."""
    return aggregate_selected(strategy, updates, weights, trim_fraction=trim_fraction, n_byzantine=n_byzantine,
                              clip_norm=clip_norm)[0]


def aggregate_selected(strategy: str, updates: NDArray[np.floating], weights: NDArray[np.floating], *,
                       trim_fraction: float = 0.2, n_byzantine: int = 1,
                       clip_norm: float | None = None) -> tuple[Vector, list[int]]:
    """`aggregate`, and the rows the rule used: Krum's selection (best score first), every row otherwise."""
    u = _check(updates, weights)
    every = list(range(u.shape[0]))
    if clip_norm is not None:
        u = clip_rows(u, clip_norm)
    if strategy == "fedavg":
        return fedavg(u, weights), every
    if strategy == "median":
        return coordinate_median(u), every
    if strategy == "trimmed-mean":
        return trimmed_mean(u, trim_fraction), every
    if strategy == "krum":
        # Krum's guarantee needs K >= 2f + 3, but with fewer members it still leaves out the f rows farthest
        # from their nearest neighbours (3 members, f = 1: the two that agree are kept); only 2 rows cannot
        # tell which one is the outlier, so both are kept.
        f = min(n_byzantine, max(u.shape[0] - 2, 0))
        return multi_krum(u, f, max(u.shape[0] - f, 1))
    raise ValueError(f"unknown strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")


# --- named arrays <-> rows -------------------------------------------------------------------------


def flatten(arrays: Mapping[str, NDArray[np.floating]], names: Sequence[str]) -> Vector:
    """Concatenate the arrays in `names` order into one float64 vector."""
    if not names:
        return np.zeros(0)
    out: Vector = np.concatenate([np.asarray(arrays[n], dtype=np.float64).ravel() for n in names])
    return out


def unflatten(vector: NDArray[np.floating], like: Mapping[str, NDArray[np.floating]],
              names: Sequence[str]) -> dict[str, NDArray[np.float32]]:
    """Split a vector back into float32 arrays shaped like `like[name]`."""
    out: dict[str, NDArray[np.float32]] = {}
    offset = 0
    for n in names:
        shape = np.asarray(like[n]).shape
        size = int(np.prod(shape)) if shape else 1
        out[n] = np.asarray(vector[offset: offset + size], dtype=np.float32).reshape(shape)
        offset += size
    if offset != len(vector):
        raise ValueError(f"vector has {len(vector)} values but the arrays need {offset}; flatten with the same names")
    return out
