"""Response strengths: Bradley-Terry on pairwise votes and Plackett-Luce on rankings, one MAP fit.

Every response r has a strength s_r. All prompts are fitted at once: responses of different prompts
never share a term, so one global objective is the sum of the per-prompt objectives.

Bradley-Terry (Bradley & Terry 1952), per unordered pair (lo, hi) with d = s_lo - s_hi:

    P(lo > hi) = sigma(d)
    -log L_BT = sum_pairs  w_lo softplus(-d) + w_hi softplus(d)

  tie_mode="half": a tie is half a win each way, w_lo = n_lo + n_tie / 2, w_hi = n_hi + n_tie / 2.
  tie_mode="davidson" (Davidson 1970): one global tie parameter nu = e^theta,

    P(lo > hi) = e^{d/2} / Z,   P(hi > lo) = e^{-d/2} / Z,   P(tie) = nu / Z,   Z = 2 cosh(d/2) + nu
    -log L_D = sum_pairs  -(n_lo - n_hi) d/2 - n_tie theta + (n_lo + n_hi + n_tie) log Z

  both_bad votes say nothing about the order and are left out of the strengths.

Plackett-Luce (Luce 1959, Plackett 1975) for a ranking o_1 > o_2 > ... > o_k, best first
(Bradley-Terry is its k = 2 case):

    log L_PL = sum_{j<k} [ s_{o_j} - logsumexp(s_{o_j}, ..., s_{o_k}) ]

Prior: s ~ N(0, 1/lambda) independently, i.e. + (lambda/2) ||s||^2. It makes the MAP exist for
undefeated responses (the MLE would send them to +inf) and pins the gauge: both likelihoods depend
only on differences within a prompt, so their gradient sums to 0 over each prompt, and at the
optimum lambda * sum_{r in prompt} s_r = 0, i.e. strengths come out centered per prompt.

Minimized with scipy's L-BFGS-B and the analytic gradient, scattered with np.bincount.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import minimize

from node.aggregation._arrays import (
    EMPTY_RANKINGS,
    AggregationInputError,
    FloatArray,
    IntArray,
    PackedRankings,
    check_comparisons,
    check_response_prompt,
    pack_rankings,
    readonly,
)
from node.aggregation.agreement import PairLabels, canonical_votes, tally_pairs

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # optional: without it BLAS keeps its default thread count
    threadpool_limits = None

TieMode = Literal["half", "davidson"]
TIE_MODES: tuple[str, ...] = ("half", "davidson")
DEFAULT_L2 = 0.1
# Davidson's log nu is kept in [-10, 10]: with no ties the MLE is nu = 0, with only ties nu = inf.
THETA_BOUNDS = (-10.0, 10.0)


@dataclass(frozen=True)
class StrengthFit:
    """The MAP strengths and how the optimizer got there."""

    strengths: FloatArray  # (R,) centered per prompt
    tie_log_nu: float | None  # Davidson's theta = log nu; None for tie_mode="half"
    neg_log_posterior: float  # objective at the optimum
    n_iter: int
    converged: bool
    message: str


@dataclass(frozen=True)
class StrengthProblem:
    """The objective's data: pair counts and rankings grouped by length (from `build_problem`)."""

    n_responses: int
    lo: IntArray  # (P,) pairs with at least one ordered vote
    hi: IntArray  # (P,)
    n_lo: FloatArray  # (P,)
    n_hi: FloatArray  # (P,)
    n_tie: FloatArray  # (P,)
    n: FloatArray  # (P,) n_lo + n_hi + n_tie
    w_hi: FloatArray  # (P,) n_hi + n_tie / 2: hi's wins with ties halved
    orders: tuple[IntArray, ...]  # (m_k, k) rankings of length k, best first
    l2: float
    tie_mode: TieMode

    @property
    def n_params(self) -> int:
        """R strengths, plus theta under Davidson."""
        return self.n_responses + (1 if self.tie_mode == "davidson" else 0)

    def value_and_grad(self, x: FloatArray) -> tuple[float, FloatArray]:
        """Negative log posterior and its gradient at x = strengths (+ theta under Davidson)."""
        r = self.n_responses
        s = x[:r]  # (R,)
        grad = np.zeros_like(x)
        f = 0.0
        if self.lo.size:
            if self.tie_mode == "half":
                f_bt, g_d = _bt_half(s, self.lo, self.hi, self.n, self.w_hi)
            else:
                f_bt, g_d, g_theta = _bt_davidson(s, x[r], self.lo, self.hi, self.n_lo, self.n_hi, self.n_tie)
                grad[r] = g_theta
            f += f_bt
            # d = s_lo - s_hi: dF/ds_lo = dF/dd, dF/ds_hi = -dF/dd
            grad[:r] += np.bincount(self.lo, weights=g_d, minlength=r)
            grad[:r] -= np.bincount(self.hi, weights=g_d, minlength=r)
        for o in self.orders:
            f_pl, g_o = _pl(s, o)
            f += f_pl
            grad[:r] += np.bincount(o.ravel(), weights=g_o.ravel(), minlength=r)
        # Gaussian prior (lambda/2) ||s||^2
        f += 0.5 * self.l2 * float(s @ s)
        grad[:r] += self.l2 * s
        return f, grad

    def value(self, x: FloatArray) -> float:
        return self.value_and_grad(x)[0]

    def grad(self, x: FloatArray) -> FloatArray:
        return self.value_and_grad(x)[1]


def _bt_half(
    s: FloatArray, lo: IntArray, hi: IntArray, n: FloatArray, w_hi: FloatArray
) -> tuple[float, FloatArray]:
    """-log L_BT with ties as half a win each way (n = w_lo + w_hi votes, w_hi = hi's wins), dF/dd per pair."""
    d = s[lo] - s[hi]  # (P,) s_lo - s_hi
    e = np.exp(-np.abs(d))  # (P,) e^{-|d|} in (0, 1]: no overflow
    sp_neg = np.log1p(e) + np.maximum(-d, 0.0)  # (P,) softplus(-d) = -log sigma(d)
    # w_lo softplus(-d) + w_hi softplus(d) = n softplus(-d) + w_hi d, since softplus(d) = softplus(-d) + d
    f = float(n @ sp_neg + w_hi @ d)
    sig_neg = np.where(d >= 0.0, e, 1.0) / (1.0 + e)  # (P,) sigma(-d)
    g_d = w_hi - n * sig_neg  # (P,) dF/dd = -n sigma(-d) + w_hi
    return f, g_d


def _bt_davidson(
    s: FloatArray,
    theta: float,
    lo: IntArray,
    hi: IntArray,
    n_lo: FloatArray,
    n_hi: FloatArray,
    n_tie: FloatArray,
) -> tuple[float, FloatArray, float]:
    """-log L_D (Davidson ties), dF/dd per pair and dF/dtheta."""
    n = n_lo + n_hi + n_tie  # (P,)
    half_d = 0.5 * (s[lo] - s[hi])  # (P,) d/2
    log_z = np.logaddexp(np.logaddexp(half_d, -half_d), theta)  # (P,) log(e^{d/2} + e^{-d/2} + nu)
    f = float(-(n_lo - n_hi) @ half_d - theta * n_tie.sum() + n @ log_z)
    # dF/dd = -(n_lo - n_hi)/2 + n (e^{d/2} - e^{-d/2}) / (2 Z)
    g_d = -0.5 * (n_lo - n_hi) + 0.5 * n * (np.exp(half_d - log_z) - np.exp(-half_d - log_z))  # (P,)
    # dF/dtheta = -n_tie + n nu / Z
    g_theta = float(-n_tie.sum() + n @ np.exp(theta - log_z))
    return f, g_d, g_theta


def _pl(s: FloatArray, o: IntArray) -> tuple[float, FloatArray]:
    """-log L_PL of the (m, k) rankings o and its gradient w.r.t. each entry s[o], (m, k)."""
    k = o.shape[1]
    s_o = s[o]  # (m, k)
    # L_j = logsumexp(s_{o_j}, ..., s_{o_k}): a reversed running logaddexp
    lse = np.logaddexp.accumulate(s_o[:, ::-1], axis=1)[:, ::-1]  # (m, k)
    f = -float(np.sum(s_o[:, : k - 1] - lse[:, : k - 1]))
    # dF/ds_{o_i} = -[i < k] + sum_{j <= min(i, k-1)} exp(s_{o_i} - L_j)
    g = np.zeros_like(s_o)  # (m, k)
    g[:, : k - 1] = -1.0
    for j in range(k - 1):
        g[:, j:] += np.exp(s_o[:, j:] - lse[:, j : j + 1])  # (m, k - j) softmax over the suffix
    return f, g


def build_problem(
    response_prompt: IntArray,
    pairs: PairLabels,
    rankings: PackedRankings = EMPTY_RANKINGS,
    *,
    l2: float = DEFAULT_L2,
    tie_mode: TieMode = "half",
) -> StrengthProblem:
    """The objective for checked inputs: pairs tallied by `tally_pairs`, rankings by `pack_rankings`."""
    if not (np.isfinite(l2) and l2 >= 0.0):
        raise AggregationInputError(f"l2 = {l2} must be a finite number >= 0; the default is {DEFAULT_L2}")
    if tie_mode not in TIE_MODES:
        raise AggregationInputError(f"tie_mode = {tie_mode!r} is not one of {TIE_MODES}; pick one of them")
    has_order = pairs.n_ordered > 0  # (P,) pairs with only both_bad votes carry nothing
    n_lo = pairs.n_lo[has_order].astype(np.float64)
    n_hi = pairs.n_hi[has_order].astype(np.float64)
    n_tie = pairs.n_ties[has_order].astype(np.float64)
    return StrengthProblem(
        n_responses=int(response_prompt.size),
        lo=pairs.lo[has_order],
        hi=pairs.hi[has_order],
        n_lo=n_lo,
        n_hi=n_hi,
        n_tie=n_tie,
        n=n_lo + n_hi + n_tie,
        w_hi=n_hi + 0.5 * n_tie,
        orders=tuple(rankings.orders[k] for k in sorted(rankings.orders)),
        l2=float(l2),
        tie_mode=tie_mode,
    )


def solve(
    problem: StrengthProblem, response_prompt: IntArray, *, gtol: float = 1e-6, max_iter: int = 2000
) -> StrengthFit:
    """Minimize the negative log posterior with L-BFGS-B from s = 0 and center per prompt.

    The optimizer runs on y = D x, D_r = sqrt(mean over r's prompt of the Hessian diagonal at 0):
    a prompt with 5,000 votes and one with 3 then look equally curved to L-BFGS. D is constant
    within a prompt so that every step keeps x's per-prompt mean at 0 (a per-response D would
    push the iterates along the gauge direction, whose curvature is only lambda).
    """
    r = problem.n_responses
    if problem.n_params == 0:
        return StrengthFit(readonly(np.zeros(0)), None, 0.0, 0, True, "no responses")
    h = _hessian_diag_at_zero(problem)  # (n_params,)
    scale = np.sqrt(h)  # (n_params,) D; theta (Davidson) keeps its own
    scale[:r] = np.sqrt(_prompt_means(h[:r], response_prompt))

    def fun(y: FloatArray) -> tuple[float, FloatArray]:
        f, g = problem.value_and_grad(y / scale)
        return f, g / scale  # dF/dy = dF/dx / D

    bounds = None
    if problem.tie_mode == "davidson":
        bounds = [(None, None)] * r + [(THETA_BOUNDS[0] * scale[r], THETA_BOUNDS[1] * scale[r])]
    with _one_blas_thread():
        res = minimize(
            fun,
            np.zeros(problem.n_params),
            jac=True,
            method="L-BFGS-B",
            bounds=bounds,
            options={"maxiter": max_iter, "gtol": gtol, "ftol": 1e-12},
        )
    x = res.x / scale
    s = x[:r]
    strengths = s - _prompt_means(s, response_prompt)  # (R,) exact centering (the prior already ~centers)
    return StrengthFit(
        strengths=readonly(strengths),
        tie_log_nu=float(x[-1]) if problem.tie_mode == "davidson" else None,
        neg_log_posterior=float(res.fun),
        n_iter=int(res.nit),
        converged=bool(res.success),
        message=str(res.message),
    )


def _one_blas_thread() -> AbstractContextManager[object]:
    """L-BFGS-B's O(R m) vector updates run through BLAS; they are memory-bound, and OpenBLAS threads
    only add contention (measured 2x slower with 2 threads on a 2-core machine at R = 500k)."""
    if threadpool_limits is None:
        return nullcontext()
    limits: AbstractContextManager[object] = threadpool_limits(limits=1, user_api="blas")
    return limits


def _hessian_diag_at_zero(problem: StrengthProblem) -> FloatArray:
    """(n_params,) diagonal of the objective's Hessian at x = 0 (all strengths equal, theta = 0)."""
    r = problem.n_responses
    h = np.full(problem.n_params, problem.l2)
    # Bradley-Terry: sigma(0) (1 - sigma(0)) = 1/4 per vote on each side (Davidson at nu = 1: 1/6; close enough)
    n = problem.n  # (P,)
    h[:r] += 0.25 * (np.bincount(problem.lo, weights=n, minlength=r) + np.bincount(problem.hi, weights=n, minlength=r))
    for o in problem.orders:
        m, k = o.shape
        # Plackett-Luce at s = 0: stage j is a uniform softmax over k - j items, p = 1/(k - j);
        # the item at position i is in stages j <= min(i, k - 2), each adding p (1 - p).
        p = 1.0 / (k - np.arange(k - 1))  # (k-1,)
        c = np.concatenate([np.cumsum(p * (1.0 - p)), [np.sum(p * (1.0 - p))]])  # (k,)
        h[:r] += np.bincount(o.ravel(), weights=np.tile(c, m), minlength=r)
    if problem.tie_mode == "davidson":
        h[r] += 2.0 / 9.0 * float(n.sum())  # d^2/dtheta^2 at d = 0, nu = 1: n (1/3)(2/3)
    return np.where(h > 0.0, h, 1.0)  # l2 = 0 and no data: the coordinate is flat, any scale works


def _prompt_means(s: FloatArray, response_prompt: IntArray) -> FloatArray:
    """(R,) mean strength of each response's prompt."""
    if s.size == 0:
        return s.copy()
    _, p = np.unique(response_prompt, return_inverse=True)  # (R,) dense prompt ids
    p = p.ravel()
    sums = np.bincount(p, weights=s)
    counts = np.bincount(p)
    return (sums / counts)[p]


def fit_strengths(
    response_prompt: ArrayLike,
    a: ArrayLike = (),
    b: ArrayLike = (),
    outcome: ArrayLike = (),
    rankings: Sequence[ArrayLike] = (),
    *,
    l2: float = DEFAULT_L2,
    tie_mode: TieMode = "half",
    gtol: float = 1e-6,
    max_iter: int = 2000,
) -> StrengthFit:
    """MAP Bradley-Terry (+ Plackett-Luce for rankings) strengths, centered per prompt.

    `response_prompt` (R,) gives each response's prompt; comparisons are (N,) arrays a, b, outcome
    (0 = a preferred, 1 = b preferred, 2 = tie, 3 = both_bad); rankings are response indices, best first.

    >>> fit = fit_strengths([0, 0, 0], a=[0, 0, 1], b=[1, 2, 2], outcome=[0, 0, 0])
    >>> [round(float(x), 3) for x in fit.strengths]
    [1.758, 0.0, -1.758]
    """
    rp = check_response_prompt(response_prompt)
    a_, b_, o_ = check_comparisons(rp, a, b, outcome)
    pairs = tally_pairs(canonical_votes(rp.size, a_, b_, o_), rp)
    problem = build_problem(rp, pairs, pack_rankings(rp, rankings), l2=l2, tie_mode=tie_mode)
    return solve(problem, rp, gtol=gtol, max_iter=max_iter)


__all__ = [
    "DEFAULT_L2",
    "TIE_MODES",
    "StrengthFit",
    "StrengthProblem",
    "TieMode",
    "build_problem",
    "fit_strengths",
    "solve",
]
