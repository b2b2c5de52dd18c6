"""Dawid-Skene annotator reliability: spammers found, accuracies recovered, few labels smoothed."""

from __future__ import annotations

import numpy as np
import pytest

from node.aggregation import AggregationInputError, dawid_skene


def simulate(seed: int, accuracies: list[float | None], n_units: int = 300):
    """Every annotator labels every unit; accuracy a: right w.p. a else one of the 2 other classes;
    None: a spammer, uniformly random."""
    rng = np.random.default_rng(seed)
    truth = rng.choice(3, size=n_units, p=[0.45, 0.45, 0.10])  # lo / hi / tie
    units, anns, labels = [], [], []
    for j, acc in enumerate(accuracies):
        if acc is None:
            lab = rng.integers(0, 3, n_units)
        else:
            wrong = (truth + rng.integers(1, 3, n_units)) % 3
            lab = np.where(rng.random(n_units) < acc, truth, wrong)
        units.append(np.arange(n_units))
        anns.append(np.full(n_units, 100 + j))
        labels.append(lab)
    return truth, np.concatenate(units), np.concatenate(anns), np.concatenate(labels)


def test_spammers_rank_lowest_and_accuracies_are_recovered() -> None:
    accuracies = [0.9, 0.9, 0.9, None, None]
    truth, units, anns, labels = simulate(0, accuracies)
    ds = dawid_skene(units, anns, labels)
    assert ds.converged
    assert ds.annotators.tolist() == [100, 101, 102, 103, 104]
    assert ds.n_labels.tolist() == [300] * 5
    # the two spammers have the two lowest reliabilities
    assert set(np.argsort(ds.reliability)[:2].tolist()) == {3, 4}
    # reliability = P(label = truth): 0.9 for the good ones, 1/3 for uniform spammers
    np.testing.assert_allclose(ds.reliability, [0.9, 0.9, 0.9, 1 / 3, 1 / 3], atol=0.1)
    # the posterior classes beat every single annotator
    assert (ds.unit_class == truth).mean() > 0.95
    np.testing.assert_allclose(ds.posterior.sum(axis=1), 1.0)
    np.testing.assert_allclose(ds.confusion.sum(axis=2), 1.0)


def test_annotator_with_few_labels_gets_a_smoothed_matrix() -> None:
    truth, units, anns, labels = simulate(1, [0.9, 0.9, 0.9, None])
    # a newcomer with 2 labels, both right: without smoothing theta would be 0/1 rows
    units = np.r_[units, [0, 1]]
    anns = np.r_[anns, [999, 999]]
    labels = np.r_[labels, truth[:2]]
    ds = dawid_skene(units, anns, labels)
    newcomer = int(np.flatnonzero(ds.annotators == 999)[0])
    assert ds.n_labels[newcomer] == 2
    assert np.all(ds.confusion[newcomer] > 0.05)
    assert 0.4 < ds.reliability[newcomer] < 0.95


def test_unlabeled_units_get_the_prior_and_inputs_are_checked() -> None:
    ds = dawid_skene([0, 0, 2, 2], [1, 2, 1, 2], [0, 0, 1, 1], n_units=4)
    np.testing.assert_allclose(ds.posterior[1], ds.class_prior)
    np.testing.assert_allclose(ds.posterior[3], ds.class_prior)
    assert ds.unit_class[0] == 0 and ds.unit_class[2] == 1
    with pytest.raises(AggregationInputError, match="labels must lie"):
        dawid_skene([0], [1], [3])
    with pytest.raises(AggregationInputError, match="one value per label"):
        dawid_skene([0, 1], [1], [0, 0])
    empty = dawid_skene([], [], [], n_units=2)
    assert empty.reliability.shape == (0,) and empty.posterior.shape == (2, 3)


def test_symmetric_pair_ranks_labelers_when_the_better_response_is_always_lo() -> None:
    # Five labelers vote lo/hi/tie on 200 pairs whose better response is always lo (as when
    # "chosen" responses are indexed first). Accuracy a: picks the better one w.p. a, else a tie
    # one time in five, else the worse one. The skew must not let EM invent a class that soaks up
    # the lo votes and rank the coin-flipper above the careful labeler.
    rng = np.random.default_rng(3)
    accuracies = [0.92, 0.85, 0.75, 0.62, 0.5]
    n_units = 200
    units, anns, labels = [], [], []
    for j, acc in enumerate(accuracies):
        u = rng.random(n_units)
        lab = np.where(u < acc, 0, np.where(u < acc + (1 - acc) * 0.2, 2, 1))
        units.append(np.arange(n_units))
        anns.append(np.full(n_units, j))
        labels.append(lab)
    units_, anns_, labels_ = np.concatenate(units), np.concatenate(anns), np.concatenate(labels)
    ds = dawid_skene(units_, anns_, labels_, symmetric_pair=True)
    assert np.argsort(-ds.reliability).tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(ds.reliability, accuracies, atol=0.12)
    # the model is the same whichever side is lo: swapping lo and hi in every label changes nothing
    swapped = np.where(labels_ < 2, 1 - labels_, labels_)
    ds2 = dawid_skene(units_, anns_, swapped, symmetric_pair=True)
    np.testing.assert_allclose(ds2.reliability, ds.reliability, atol=1e-9)
