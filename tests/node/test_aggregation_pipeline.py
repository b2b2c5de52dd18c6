"""`aggregate` end to end, and the `>>>` examples of every aggregation module."""

from __future__ import annotations

import doctest
import importlib
import math

import numpy as np
import pytest
from scipy.special import expit
from scipy.stats import spearmanr

from node.aggregation import AggregationInputError, aggregate, fit_strengths

MODULES = ["agreement", "ambiguity", "pipeline", "reliability", "strengths"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str) -> None:
    module = importlib.import_module(f"node.aggregation.{name}")
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def simulate(seed: int = 0):
    """40 prompts x 6 responses; annotators 0-3 answer by the BT model, 4 is a spammer, source = annotator % 2."""
    rng = np.random.default_rng(seed)
    n_prompts, per = 40, 6
    rp = np.repeat(np.arange(n_prompts), per)
    true = rng.normal(size=rp.size) * 1.5
    n = 6000
    p = rng.integers(0, n_prompts, n)
    i = rng.integers(0, per, n)
    j = (i + rng.integers(1, per, n)) % per
    a, b = p * per + i, p * per + j
    annotator = rng.integers(0, 5, n)
    outcome = np.where(rng.random(n) < expit(true[a] - true[b]), 0, 1)
    spam = annotator == 4
    outcome[spam] = rng.integers(0, 3, spam.sum())
    source = annotator % 2
    return rp, true, a, b, outcome, annotator, source


def test_aggregate_end_to_end() -> None:
    rp, true, a, b, outcome, annotator, source = simulate()
    res = aggregate(rp, a, b, outcome, annotator, source)
    assert res.strengths_converged
    centered = true - np.repeat(true.reshape(40, 6).mean(axis=1), 6)
    assert spearmanr(res.strengths, centered).statistic > 0.9
    np.testing.assert_allclose(res.strengths.reshape(40, 6).sum(axis=1), 0.0, atol=1e-9)
    assert len(res.pairs) == 40 * 15  # every pair of every prompt got votes
    assert int(res.pairs.n_votes.sum()) == a.size
    assert res.n_pairable_units == len(res.pairs)
    assert set(res.alpha_by_source) == {0, 1}
    assert 0.0 < res.alpha_overall < 1.0
    assert res.reliability.annotators.tolist() == [0, 1, 2, 3, 4]
    assert int(np.argmin(res.reliability.reliability)) == 4  # the spammer
    assert res.reliability.posterior.shape == (len(res.pairs), 3)
    assert np.all(np.diff(res.ambiguous.score) <= 0)
    assert set(res.timings) == {"validate", "pairs", "strengths", "alpha", "reliability", "ambiguity", "total"}
    # the result equals the stages run one by one
    np.testing.assert_allclose(res.strengths, fit_strengths(rp, a, b, outcome).strengths, atol=1e-5)


def test_rankings_count_once_in_strengths_and_as_votes_in_labels() -> None:
    rp = [0, 0, 0]
    rankings = [[2, 0, 1], [2, 1, 0]]
    with_votes = aggregate(rp, rankings=rankings, ranking_annotator=[5, 6], ranking_source=[1, 1])
    without = aggregate(rp, rankings=rankings, rankings_as_votes=False)
    np.testing.assert_allclose(with_votes.strengths, fit_strengths(rp, rankings=rankings).strengths, atol=1e-6)
    np.testing.assert_allclose(with_votes.strengths, without.strengths, atol=1e-9)
    # 2 rankings of 3 -> 6 implied votes on the 3 pairs: (0,1) split, (0,2) and (1,2) unanimous for 2
    assert with_votes.pairs.lo.tolist() == [0, 0, 1] and with_votes.pairs.hi.tolist() == [1, 2, 2]
    np.testing.assert_array_equal(with_votes.pairs.p_lo, [0.5, 0.0, 0.0])
    assert with_votes.n_pairable_units == 3 and set(with_votes.alpha_by_source) == {1}
    assert with_votes.reliability.n_labels.tolist() == [3, 3]
    assert len(without.pairs) == 0 and math.isnan(without.alpha_overall)


def test_aggregate_on_nothing() -> None:
    res = aggregate([0, 0, 1])
    np.testing.assert_array_equal(res.strengths, [0.0, 0.0, 0.0])
    assert len(res.pairs) == 0 and len(res.ambiguous) == 0
    assert math.isnan(res.alpha_overall) and res.alpha_by_source == {} and res.n_pairable_units == 0


def test_unknown_annotators_and_both_bad_are_left_out_of_reliability() -> None:
    res = aggregate([0, 0], a=[0, 0, 0, 1], b=[1, 1, 1, 0], outcome=[0, 3, 0, 0], annotator=[-1, 7, 7, 8])
    assert res.reliability.annotators.tolist() == [7, 8]
    assert res.reliability.n_labels.tolist() == [1, 1]


def test_mismatched_columns_raise() -> None:
    with pytest.raises(AggregationInputError, match="annotator has 1 rows but there are 2"):
        aggregate([0, 0], a=[0, 1], b=[1, 0], outcome=[0, 0], annotator=[1])
    with pytest.raises(AggregationInputError, match="ranking_source"):
        aggregate([0, 0], rankings=[[0, 1]], ranking_source=[1, 2])
