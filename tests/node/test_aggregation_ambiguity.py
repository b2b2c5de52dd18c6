"""The ambiguity queue: cycles, low agreement and both-bad majorities, scored and sorted."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from node.aggregation import AggregationInputError, ambiguity_queue, pair_labels, three_cycles


def test_constructed_cycle_is_reported_pair_by_pair() -> None:
    # prompt 0: 0 > 1 (2-1), 1 > 2 (3-0), 2 > 0 (1-0): a cycle whose weakest margin is |2 * 2/3 - 1| = 1/3
    # prompt 1: 3 > 4 > 5 and 3 > 5: transitive, nothing to report
    rp = [0, 0, 0, 1, 1, 1]
    a = [0, 0, 1, 1, 1, 1, 2, 3, 4, 3]
    b = [1, 1, 0, 2, 2, 2, 0, 4, 5, 5]
    outcome = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    queue = ambiguity_queue(pair_labels(rp, a, b, outcome), low_agreement=0.6)
    cycle = [(i.lo, i.hi, i.prompt) for i in queue.items() if i.reason == "cycle"]
    assert sorted(cycle) == [(0, 1, 0), (0, 2, 0), (1, 2, 0)]
    assert all(i.score == pytest.approx(1 / 3) for i in queue.items() if i.reason == "cycle")
    assert len(queue) == 3  # (0, 1) at 2/3 agreement is above low_agreement=0.6


def test_three_cycles_match_brute_force_on_random_tournaments() -> None:
    rng = np.random.default_rng(0)
    n_found = 0
    for _ in range(40):
        n = int(rng.integers(3, 8))
        src, dst = [], []
        for i, j in itertools.combinations(range(n), 2):
            if rng.random() < 0.8:  # some pairs have no majority edge
                winner, loser = (i, j) if rng.random() < 0.5 else (j, i)
                src.append(winner)
                dst.append(loser)
        edges = set(zip(src, dst, strict=True))
        want = sorted(
            (x, y, z) for x, y, z in itertools.permutations(range(n), 3)
            if x < y and x < z and {(x, y), (y, z), (z, x)} <= edges
        )
        got = three_cycles(np.asarray(src, dtype=np.int64), np.asarray(dst, dtype=np.int64))
        assert sorted(map(tuple, got.tolist())) == want
        n_found += len(want)
    assert n_found > 20  # the tournaments did contain cycles


def test_cycles_are_found_in_many_prompts_at_once() -> None:
    n_prompts = 500
    base = 3 * np.arange(n_prompts)
    rp = np.repeat(np.arange(n_prompts), 3)
    a = np.concatenate([base, base + 1, base + 2])  # 0 > 1 > 2 > 0 in every prompt
    b = np.concatenate([base + 1, base + 2, base])
    queue = ambiguity_queue(pair_labels(rp, a, b, np.zeros(a.size, dtype=int)))
    assert len(queue) == 3 * n_prompts
    assert np.all(queue.reason == 1) and np.all(queue.score == 1.0)
    assert np.array_equal(np.bincount(queue.prompt), np.full(n_prompts, 3))


def test_low_agreement_and_both_bad_scores_and_order() -> None:
    rp = [0, 0, 0, 0]
    a = [0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2]
    b = [1, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3]
    # (0,1): 3 lo, 2 hi -> shares 0.6, 0.4: score 1 - (0.6 - 0.4) = 0.8
    # (1,2): 1 lo, 1 hi, 2 ties -> shares 0.5 (tie), 0.25, 0.25: score 1 - (0.5 - 0.25) = 0.75
    # (2,3): 2 both_bad, 1 lo -> both_bad score 2/3; one ordered vote: not low agreement
    outcome = [0, 0, 0, 1, 1, 0, 1, 2, 2, 3, 3, 0]
    items = ambiguity_queue(pair_labels(rp, a, b, outcome)).items()
    got = [(i.lo, i.hi, i.reason, round(i.score, 6)) for i in items]
    assert got == [(0, 1, "low_agreement", 0.8), (1, 2, "low_agreement", 0.75), (2, 3, "both_bad", 0.666667)]


def test_agreement_is_measured_on_the_votes_not_on_the_soft_label() -> None:
    # pair (k, k + 1) of prompt k, votes lo / hi / tie (coded 0 / 1 / 2 with a < b)
    cases = {
        "unanimous tie": [2, 2, 2],  # p_lo = 0.5, but everyone agrees: not ambiguous
        "tie majority": [2, 2, 2, 0],  # 75% tie
        "50/50 split": [0, 1],  # p_lo = 0.5 and a true split: score 1
        "three-way split": [0, 1, 2],  # the most common vote has a third: score 1
        "tie or lo": [2, 0],  # 50/50 between tie and lo: score 1
        "unanimous lo": [0, 0, 0],
        "3 lo 1 tie": [0, 0, 0, 2],  # 75%, p_lo = 0.875
        "2 tie 1 hi": [2, 2, 1],  # 67%: below 0.7, runner-up 1/3: score 2/3
    }
    rp, a, b, outcome = [], [], [], []
    for k, votes in enumerate(cases.values()):
        rp += [k, k]
        a += [2 * k] * len(votes)
        b += [2 * k + 1] * len(votes)
        outcome += votes
    items = ambiguity_queue(pair_labels(rp, a, b, outcome)).items()
    names = list(cases)
    got = {names[i.prompt]: round(i.score, 6) for i in items}
    assert got == {"50/50 split": 1.0, "three-way split": 1.0, "tie or lo": 1.0, "2 tie 1 hi": 0.666667}
    assert {i.reason for i in items} == {"low_agreement"}


def test_threshold_is_checked() -> None:
    with pytest.raises(AggregationInputError, match="low_agreement"):
        ambiguity_queue(pair_labels([0, 0], [0], [1], [0]), low_agreement=0.4)
