"""Bradley-Terry / Plackett-Luce strengths: recovery, exact toys, the analytic gradient, input checks."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import brentq, check_grad
from scipy.special import expit
from scipy.stats import spearmanr

from node.aggregation import AggregationInputError, fit_strengths
from node.aggregation._arrays import check_response_prompt, pack_rankings
from node.aggregation.agreement import pair_labels
from node.aggregation.strengths import build_problem


def centered(true: np.ndarray, n_prompts: int, per: int) -> np.ndarray:
    return true - np.repeat(true.reshape(n_prompts, per).mean(axis=1), per)


def simulate_bt(seed: int, n_prompts: int = 10, per: int = 20, per_response: int = 100):
    """Comparisons drawn from the Bradley-Terry model with true strengths ~ N(0, 1)."""
    rng = np.random.default_rng(seed)
    r = n_prompts * per
    rp = np.repeat(np.arange(n_prompts), per)
    true = rng.normal(size=r)
    n = r * per_response // 2  # each response is in `per_response` comparisons on average
    p = rng.integers(0, n_prompts, n)
    i = rng.integers(0, per, n)
    j = (i + rng.integers(1, per, n)) % per
    a, b = p * per + i, p * per + j
    outcome = np.where(rng.random(n) < expit(true[a] - true[b]), 0, 1)
    return rp, true, a, b, outcome


def test_bradley_terry_recovers_simulated_strengths() -> None:
    rp, true, a, b, outcome = simulate_bt(seed=0)
    fit = fit_strengths(rp, a, b, outcome)
    assert fit.converged, fit.message
    rho = spearmanr(fit.strengths, centered(true, 10, 20)).statistic
    assert rho >= 0.95, rho


def test_plackett_luce_recovers_strengths_from_rankings() -> None:
    rng = np.random.default_rng(1)
    n_prompts, per = 10, 20
    rp = np.repeat(np.arange(n_prompts), per)
    true = rng.normal(size=n_prompts * per)
    rankings = []
    for _ in range(n_prompts * per * 40 // 5):  # ~40 rankings per response, lengths 4..6
        p, k = rng.integers(n_prompts), rng.integers(4, 7)
        items = p * per + rng.choice(per, size=k, replace=False)
        # Gumbel-max sampling draws exactly from the Plackett-Luce model
        rankings.append(items[np.argsort(-(true[items] + rng.gumbel(size=k)))])
    fit = fit_strengths(rp, rankings=rankings)
    assert fit.converged, fit.message
    rho = spearmanr(fit.strengths, centered(true, n_prompts, per)).statistic
    assert rho >= 0.95, rho


def _problem(tie_mode: str):
    rng = np.random.default_rng(2)
    rp = np.repeat(np.arange(3), [4, 5, 6])
    n = 60
    p = rng.integers(0, 3, n)
    first = np.array([0, 4, 9])[p]
    size = np.array([4, 5, 6])[p]
    i = rng.integers(0, size)
    j = (i + rng.integers(1, size)) % size
    a, b = first + i, first + j
    outcome = rng.integers(0, 4, n)  # wins, losses, ties and both_bad
    rankings = [np.array([0, 2, 1]), np.array([8, 4, 6, 5, 7]), np.array([14, 9]), np.array([10, 13, 11, 12])]
    rpc = check_response_prompt(rp)
    return build_problem(rpc, pair_labels(rp, a, b, outcome), pack_rankings(rpc, rankings), l2=0.3, tie_mode=tie_mode)


@pytest.mark.parametrize("tie_mode", ["half", "davidson"])
def test_analytic_gradient_matches_finite_differences(tie_mode: str) -> None:
    problem = _problem(tie_mode)
    rng = np.random.default_rng(3)
    for _ in range(3):
        x = rng.normal(size=problem.n_params)
        err = check_grad(problem.value, problem.grad, x, epsilon=1e-6)
        assert err < 1e-5 * max(1.0, np.linalg.norm(problem.grad(x))), err


def test_two_responses_with_half_ties_match_the_closed_form() -> None:
    # 3 wins, 1 loss, 2 ties: w = 3 + 2/2 = 4, l = 1 + 2/2 = 2. By symmetry s = (x, -x).
    a = [0, 0, 0, 1, 0, 1]
    b = [1, 1, 1, 0, 1, 0]
    outcome = [0, 0, 0, 0, 2, 2]  # the 4th row: "a preferred" with a = 1, i.e. a loss for 0
    wins, losses = 4.0, 2.0
    # lambda = 0: sigma(2x) = w / (w + l)  =>  x = log(w / l) / 2
    fit0 = fit_strengths([0, 0], a, b, outcome, l2=0.0, gtol=1e-10)
    np.testing.assert_allclose(fit0.strengths, [0.5 * np.log(wins / losses), -0.5 * np.log(wins / losses)], atol=1e-6)
    # lambda > 0: dF/dx = 2 [(w + l) sigma(2x) - w + lambda x] = 0, solved by bisection
    lam = 0.5
    x = brentq(lambda x: (wins + losses) * expit(2 * x) - wins + lam * x, -10, 10, xtol=1e-14)
    fit = fit_strengths([0, 0], a, b, outcome, l2=lam, gtol=1e-10)
    np.testing.assert_allclose(fit.strengths, [x, -x], atol=1e-6)
    assert 0 < x < 0.5 * np.log(wins / losses)  # the prior shrinks toward 0


def test_davidson_tie_parameter_matches_the_closed_form() -> None:
    # n_lo = n_hi = 3, t = 4 ties. Symmetry gives d = 0, then dF/dtheta = -t + n nu / (2 + nu) = 0
    # => nu = 2 t / (n - t) = 2 * 4 / 6.
    a = [0, 0, 0, 1, 1, 1, 0, 1, 0, 1]
    b = [1, 1, 1, 0, 0, 0, 1, 0, 1, 0]
    outcome = [0, 0, 0, 0, 0, 0, 2, 2, 2, 2]
    fit = fit_strengths([0, 0], a, b, outcome, tie_mode="davidson", gtol=1e-10)
    np.testing.assert_allclose(fit.strengths, [0.0, 0.0], atol=1e-7)
    assert fit.tie_log_nu == pytest.approx(np.log(8 / 6), abs=1e-6)


def test_undefeated_response_has_finite_strength_and_prompts_are_centered() -> None:
    rp = [0, 0, 0, 1, 1]
    a = [0, 0, 1, 3, 3]
    b = [1, 2, 2, 4, 4]
    fit = fit_strengths(rp, a, b, [0, 0, 0, 0, 0])
    assert np.all(np.isfinite(fit.strengths))
    assert fit.strengths[0] > fit.strengths[1] > fit.strengths[2]
    np.testing.assert_allclose([fit.strengths[:3].sum(), fit.strengths[3:].sum()], 0.0, atol=1e-12)


def test_joint_fit_equals_separate_fits_per_prompt() -> None:
    rp, _, a, b, outcome = simulate_bt(seed=4, n_prompts=3, per=5, per_response=10)
    joint = fit_strengths(rp, a, b, outcome, gtol=1e-10).strengths
    for p in range(3):
        sel = rp[a] == p
        local = fit_strengths(np.zeros(5, dtype=int), a[sel] - 5 * p, b[sel] - 5 * p, outcome[sel], gtol=1e-10)
        np.testing.assert_allclose(joint[5 * p : 5 * p + 5], local.strengths, atol=1e-6)


def test_both_bad_votes_do_not_move_strengths() -> None:
    rp, _, a, b, outcome = simulate_bt(seed=5, n_prompts=2, per=4, per_response=10)
    base = fit_strengths(rp, a, b, outcome, gtol=1e-10).strengths
    extra = fit_strengths(
        rp, np.r_[a, a[:7]], np.r_[b, b[:7]], np.r_[outcome, np.full(7, 3)], gtol=1e-10
    ).strengths
    np.testing.assert_allclose(extra, base, atol=1e-8)


def test_plackett_luce_with_two_items_is_bradley_terry() -> None:
    rp = [0, 0, 0]
    bt = fit_strengths(rp, a=[0, 0, 1, 2], b=[1, 2, 2, 1], outcome=[0, 0, 0, 0], gtol=1e-10)
    pl = fit_strengths(rp, rankings=[[0, 1], [0, 2], [1, 2], [2, 1]], gtol=1e-10)
    np.testing.assert_allclose(pl.strengths, bt.strengths, atol=1e-8)


def test_no_votes_gives_zero_strengths() -> None:
    fit = fit_strengths([0, 0, 1])
    np.testing.assert_array_equal(fit.strengths, [0.0, 0.0, 0.0])
    assert fit_strengths([]).strengths.shape == (0,)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"a": [0], "b": [2], "outcome": [0]}, "different prompts"),
        ({"a": [0], "b": [0], "outcome": [0]}, "with itself"),
        ({"a": [0], "b": [5], "outcome": [0]}, "not a response index"),
        ({"a": [0], "b": [1], "outcome": [4]}, "not a code"),
        ({"a": [0, 1], "b": [1], "outcome": [0]}, "one value per comparison"),
        ({"rankings": [[0, 1, 0]]}, "twice"),
        ({"rankings": [[0, 2]]}, "different prompts"),
        ({"rankings": [[1]]}, "at least 2"),
        ({"l2": -1.0}, "l2"),
        ({"tie_mode": "draw"}, "tie_mode"),
    ],
)
def test_bad_inputs_raise_value_error_naming_the_cause(kwargs: dict, needle: str) -> None:
    with pytest.raises(AggregationInputError, match=needle) as info:
        fit_strengths([0, 0, 1], **kwargs)
    assert isinstance(info.value, ValueError)
