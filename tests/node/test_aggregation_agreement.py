"""Soft labels and Krippendorff's alpha: textbook value, hand computations, a naive reference."""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.aggregation import krippendorff_alpha_nominal, pair_labels
from node.aggregation.agreement import canonical_votes, pair_alpha

# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", the 4 coders x 12 units
# example with missing values ("."). Its nominal alpha is 0.743.
TEXTBOOK = [
    "1 2 3 3 2 1 4 1 2 . . .",  # coder A
    "1 2 3 3 2 2 4 1 2 5 . 3",  # coder B
    ". 3 3 3 2 3 4 2 2 5 1 .",  # coder C
    "1 2 3 3 2 4 4 1 2 5 1 .",  # coder D
]


def textbook_rows() -> tuple[list[int], list[int]]:
    units, values = [], []
    for row in TEXTBOOK:
        for unit, cell in enumerate(row.split()):
            if cell != ".":
                units.append(unit)
                values.append(int(cell))
    return units, values


def naive_coincidences(units: list[int], values: list[int]) -> dict[tuple[int, int], float]:
    """Reference: the coincidence matrix built pair by pair, as in the paper's worked example."""
    by_unit: dict[int, list[int]] = defaultdict(list)
    for u, v in zip(units, values, strict=True):
        by_unit[u].append(v)
    o: dict[tuple[int, int], float] = defaultdict(float)
    for vals in by_unit.values():
        m = len(vals)
        if m < 2:
            continue
        for i in range(m):
            for j in range(m):
                if i != j:
                    o[vals[i], vals[j]] += 1.0 / (m - 1)
    return o


def naive_alpha(units: list[int], values: list[int]) -> float:
    """alpha = 1 - D_o / D_e with D_o, D_e summed over the off-diagonal of the coincidence matrix."""
    o = naive_coincidences(units, values)
    cats = sorted({c for c, _ in o})
    n_c = {c: sum(o[c, k] for k in cats) for c in cats}
    n = sum(n_c.values())
    d_o = sum(o[c, k] for c in cats for k in cats if c != k)
    d_e = sum(n_c[c] * n_c[k] for c in cats for k in cats if c != k) / (n - 1)
    return 1.0 - d_o / d_e if d_e > 0 else math.nan


def test_textbook_example_gives_0_743() -> None:
    units, values = textbook_rows()
    # The coincidence matrix by hand (the paper's table): unit 12 has one value and is left out;
    # e.g. unit 6 has values (1, 2, 3, 4), so each of its 12 ordered pairs adds 1/3.
    third = 1 / 3
    hand = np.array([
        [7, 4 * third, third, third, 0],
        [4 * third, 10, 4 * third, third, 0],
        [third, 4 * third, 8, third, 0],
        [third, third, third, 4, 0],
        [0, 0, 0, 0, 3],
    ])
    o = naive_coincidences(units, values)
    np.testing.assert_allclose([[o[c, k] for k in range(1, 6)] for c in range(1, 6)], hand, atol=1e-12)
    n_c = hand.sum(axis=1)  # (9, 13, 10, 5, 3), n = 40
    np.testing.assert_allclose(n_c, [9, 13, 10, 5, 3])
    s = float(np.sum(n_c * (n_c - 1)))  # 344
    # alpha = ((n - 1) sum_c o_cc - sum_c n_c (n_c - 1)) / (n (n - 1) - sum_c n_c (n_c - 1)) = 904 / 1216
    by_hand = (39 * np.trace(hand) - s) / (40 * 39 - s)
    assert by_hand == pytest.approx(904 / 1216, abs=1e-12)
    alpha = krippendorff_alpha_nominal(units, values)
    assert round(alpha, 3) == 0.743
    assert alpha == pytest.approx(by_hand, abs=1e-12)
    assert alpha == pytest.approx(naive_alpha(units, values), abs=1e-12)


def test_perfect_agreement_is_one_and_systematic_disagreement_is_negative() -> None:
    assert krippendorff_alpha_nominal([0, 0, 1, 1, 2, 2], [1, 1, 2, 2, 1, 1]) == 1.0
    # Three units, each coded (1, 2): o_12 = o_21 = 3, n_1 = n_2 = 3, n = 6
    # alpha = (5 * 0 - 2 * 3 * 2) / (6 * 5 - 2 * 3 * 2) = -12 / 18
    assert krippendorff_alpha_nominal([0, 0, 1, 1, 2, 2], [1, 2, 1, 2, 2, 1]) == pytest.approx(-2 / 3)


def test_alpha_is_nan_when_undefined() -> None:
    assert math.isnan(krippendorff_alpha_nominal([], []))
    assert math.isnan(krippendorff_alpha_nominal([0, 1, 2], [1, 2, 1]))  # no unit has 2 values
    assert math.isnan(krippendorff_alpha_nominal([0, 0, 1, 1], [3, 3, 3, 3]))  # one category: D_e = 0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 3)), min_size=0, max_size=40))
def test_vectorized_alpha_equals_the_naive_coincidence_matrix(rows: list[tuple[int, int]]) -> None:
    units = [u for u, _ in rows]
    values = [v for _, v in rows]
    got, want = krippendorff_alpha_nominal(units, values), naive_alpha(units, values) if rows else math.nan
    assert (math.isnan(got) and math.isnan(want)) or got == pytest.approx(want, abs=1e-9)


def test_soft_labels_are_exact_on_a_toy() -> None:
    # Prompt 0: responses 0, 1, 2; prompt 1: responses 3, 4.
    rp = [0, 0, 0, 1, 1]
    a = [0, 1, 1, 0, 2, 2, 4, 4, 3]
    b = [1, 0, 0, 1, 0, 1, 3, 3, 4]
    # (0,1): 0>1, 1>0 (a=1 preferred), tie, both_bad  -> n_lo 1, n_hi 1, tie 1, bb 1, p = 1.5 / 3
    # (0,2): a=2 b=0, "B preferred" -> 0 preferred     -> p = 1
    # (1,2): a=2 b=1, tie                              -> p = 0.5
    # (3,4): both_bad, both_bad, a=3 "A"               -> p = 1 (one ordered vote), bb 2
    outcome = [0, 0, 2, 3, 1, 2, 3, 3, 0]
    pl = pair_labels(rp, a, b, outcome)
    assert pl.lo.tolist() == [0, 0, 1, 3]
    assert pl.hi.tolist() == [1, 2, 2, 4]
    assert pl.prompt.tolist() == [0, 0, 0, 1]
    assert pl.n_lo.tolist() == [1, 1, 0, 1]
    assert pl.n_hi.tolist() == [1, 0, 0, 0]
    assert pl.n_ties.tolist() == [1, 0, 1, 0]
    assert pl.n_both_bad.tolist() == [1, 0, 0, 2]
    assert pl.n_votes.tolist() == [4, 1, 1, 3]
    np.testing.assert_array_equal(pl.p_lo, [0.5, 1.0, 0.5, 1.0])


def test_pair_with_only_both_bad_votes_has_nan_soft_label() -> None:
    pl = pair_labels([0, 0], [0, 1], [1, 0], [3, 3])
    assert math.isnan(pl.p_lo[0]) and pl.n_votes[0] == 2 and pl.n_ordered[0] == 0


def test_results_are_read_only() -> None:
    pl = pair_labels([0, 0], [0], [1], [0])
    with pytest.raises(ValueError):
        pl.p_lo[0] = 0.0


def test_alpha_per_source_uses_only_that_sources_votes() -> None:
    # Pairs (0,1), (2,3), (4,5) in three prompts. Source 7 agrees perfectly (and uses two values);
    # source 9 disagrees systematically; overall mixes both.
    rp = [0, 0, 1, 1, 2, 2]
    a = [0, 0, 3, 3, 4, 4, 0, 1, 2, 3]
    b = [1, 1, 2, 2, 5, 5, 1, 0, 3, 2]
    outcome = [0, 0, 0, 0, 2, 2, 0, 0, 0, 0]
    source = [7, 7, 7, 7, 7, 7, 9, 9, 9, 9]
    rp_ = np.asarray(rp)
    votes = canonical_votes(rp_.size, np.asarray(a), np.asarray(b), np.asarray(outcome))
    overall, by_source, n_pairable = pair_alpha(votes, np.asarray(source))
    assert n_pairable == 3
    assert by_source[7] == 1.0
    # source 9: units (0,1) and (2,3) each get one "lo" and one "hi" vote:
    # o_lo,hi = o_hi,lo = 2, n = 4, alpha = (3 * 0 - 2 * 2 * 1) / (4 * 3 - 2 * 2 * 1) = -1/2
    assert by_source[9] == pytest.approx(-0.5)
    canon_units = votes.pair.tolist()
    assert overall == pytest.approx(krippendorff_alpha_nominal(canon_units, votes.value.tolist()))


def test_orientation_does_not_change_the_pair_tally() -> None:
    rng = np.random.default_rng(0)
    n = 200
    a = rng.integers(0, 6, n)
    b = (a + rng.integers(1, 6, n)) % 6
    outcome = rng.integers(0, 4, n)
    flipped = np.where(outcome < 2, 1 - outcome, outcome)  # swap sides: A <-> B
    one = pair_labels(np.zeros(6, dtype=int), a, b, outcome)
    two = pair_labels(np.zeros(6, dtype=int), b, a, flipped)
    for field in ("lo", "hi", "n_lo", "n_hi", "n_ties", "n_both_bad", "p_lo"):
        np.testing.assert_array_equal(getattr(one, field), getattr(two, field))


def test_pair_alpha_does_not_depend_on_which_side_is_lo() -> None:
    # 300 pairs, 4 labelers who each pick the better response with probability 0.8. The better
    # response gets the lower index in every pair (as when "chosen" responses are indexed first):
    # nearly all votes say "lo", which must not read as chance agreement.
    rng = np.random.default_rng(1)
    n_pairs, n_labelers = 300, 4
    lo = np.repeat(np.arange(n_pairs) * 2, n_labelers)
    hi = lo + 1
    correct = rng.random(lo.size) < 0.8
    outcome = np.where(correct, 0, 1)  # A = the lo response
    rp = np.repeat(np.arange(n_pairs), 2)
    aligned, _, _ = pair_alpha(canonical_votes(rp.size, lo, hi, outcome), np.zeros(lo.size, np.int64))
    # The same votes with response indices shuffled: lo/hi now falls either way.
    perm = rng.permutation(rp.size)
    shuffled, _, _ = pair_alpha(canonical_votes(rp.size, perm[lo], perm[hi], outcome), np.zeros(lo.size, np.int64))
    assert aligned == pytest.approx(shuffled)
    # Agreement 0.8^2 + 0.2^2 = 0.68 against chance 0.5: alpha close to 0.36.
    assert 0.28 < aligned < 0.44
