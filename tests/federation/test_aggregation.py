"""Every aggregation rule equals a naive numpy reference written from its definition."""

from __future__ import annotations

import numpy as np
import pytest

from federation import aggregation as agg


@pytest.fixture
def updates() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(7, 5))


def test_fedavg_matches_loop(updates: np.ndarray) -> None:
    w = np.arange(1.0, 8.0)
    ref = sum(w[k] * updates[k] for k in range(7)) / w.sum()
    np.testing.assert_allclose(agg.fedavg(updates, w), ref)


def test_median_matches_per_coordinate_sort(updates: np.ndarray) -> None:
    ref = [sorted(updates[:, j])[3] for j in range(5)]
    np.testing.assert_allclose(agg.coordinate_median(updates), ref)


def test_trimmed_mean_matches_per_coordinate_trim(updates: np.ndarray) -> None:
    b = int(0.3 * 7)
    ref = [np.mean(sorted(updates[:, j])[b: 7 - b]) for j in range(5)]
    np.testing.assert_allclose(agg.trimmed_mean(updates, 0.3), ref)


def test_krum_matches_brute_force(updates: np.ndarray) -> None:
    f = 2
    m = 7 - f - 2
    scores = []
    for i in range(7):
        d = sorted(float(np.sum((updates[i] - updates[j]) ** 2)) for j in range(7) if j != i)
        scores.append(sum(d[:m]))
    np.testing.assert_allclose(agg.krum_scores(updates, f), scores, rtol=1e-9)
    best = int(np.argmin(scores))
    np.testing.assert_allclose(agg.krum(updates, f), updates[best])
    sel = list(np.argsort(scores)[:3])
    out, chosen = agg.multi_krum(updates, f, 3)
    assert chosen == sel
    np.testing.assert_allclose(out, updates[sel].mean(axis=0))


def test_clipping_caps_norm_and_keeps_direction() -> None:
    u = np.array([3.0, 4.0])
    np.testing.assert_allclose(agg.clip_by_norm(u, 1.0), u / 5)
    np.testing.assert_allclose(agg.clip_by_norm(u, 10.0), u)
    rows = agg.clip_rows(np.array([[3.0, 4.0], [0.3, 0.4]]), 1.0)
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), [1.0, 0.5])


def test_dp_noise_has_the_calibrated_scale() -> None:
    rng = np.random.default_rng(1)
    u = np.full(20000, 10.0)
    out = agg.dp_privatize(u, clip_norm=1.0, noise_multiplier=0.5, rng=rng)
    noise = out - agg.clip_by_norm(u, 1.0)
    assert abs(noise.std() - 0.5) < 0.02


def test_robust_rules_resist_one_scaled_attacker() -> None:
    rng = np.random.default_rng(2)
    honest = rng.normal(1.0, 0.1, size=(4, 10))
    bad = np.vstack([honest, -100.0 * honest[0]])
    w = np.ones(5)
    for name in ("median", "trimmed-mean", "krum"):
        assert np.abs(agg.aggregate(name, bad, w) - 1.0).max() < 0.5, name
    assert np.abs(agg.aggregate("fedavg", bad, w) - 1.0).max() > 10


@pytest.mark.parametrize("n_honest", [2, 3])
@pytest.mark.parametrize("name", ["trimmed-mean", "krum"])
def test_robust_rules_resist_a_scaled_attacker_among_three_or_four(name: str, n_honest: int) -> None:
    """With 3 or 4 members floor(0.2 K) trims nothing and K >= 2f + 3 fails for f = 1: the rules must still
    leave the attacker out, not fall back to a mean it can drag anywhere."""
    rng = np.random.default_rng(3)
    honest = rng.normal(1.0, 0.1, size=(n_honest, 10))
    bad = np.vstack([honest, 100.0 * honest[0]])
    assert np.abs(agg.aggregate(name, bad, np.ones(n_honest + 1)) - 1.0).max() < 0.5


def test_krum_keeps_both_of_two_rows() -> None:
    rows = np.array([[0.0, 1.0], [2.0, 3.0]])
    out, chosen = agg.aggregate_selected("krum", rows, np.ones(2))
    assert sorted(chosen) == [0, 1]
    np.testing.assert_allclose(out, [1.0, 2.0])


def test_outlier_stats_match_their_definition(updates: np.ndarray) -> None:
    norms = [float(np.sqrt(sum(x * x for x in row))) for row in updates]
    ratio, cosine = agg.outlier_stats(updates)
    np.testing.assert_allclose(ratio, np.array(norms) / sorted(norms)[3])
    ref = []
    for i, row in enumerate(updates):
        others = [r for k, r in enumerate(updates) if k != i]  # six rows: the median is the mean of the middle two
        center = np.array([(sorted(r[j] for r in others)[2] + sorted(r[j] for r in others)[3]) / 2 for j in range(5)])
        ref.append(float(np.dot(row, center)) / (norms[i] * float(np.linalg.norm(center))))
    np.testing.assert_allclose(cosine, ref)


def test_unrelated_noisy_updates_do_not_look_aligned() -> None:
    """Independent high-dimensional updates (what Adam steps on small batches look like) are nearly
    orthogonal, and their cosines say so: a median that includes the row itself would report ~0.45 each,
    and would report the same for a negated row."""
    rows = np.random.default_rng(4).normal(size=(4, 20000))
    _, cosine = agg.outlier_stats(rows)
    assert np.abs(cosine).max() < 0.05, cosine
    rows[0] *= -1.0
    assert np.abs(agg.outlier_stats(rows)[1]).max() < 0.05


@pytest.mark.parametrize("factor, caught", [(100.0, "x the median (limit 3x)"), (-10.0, "cosine"), (-1.0, "cosine"),
                                            (1.0, None), (2.0, None)])
def test_screen_names_the_scaled_or_negated_row(factor: float, caught: str | None) -> None:
    rng = np.random.default_rng(3)
    honest = 1.0 + rng.normal(0.0, 0.1, size=(4, 50))  # four members that roughly agree
    rows = np.vstack([honest, factor * honest[0]])
    out = agg.screen_outliers(rows, max_norm_ratio=3.0, min_cosine=-0.5)
    if caught is None:
        assert out == {}
    else:
        assert list(out) == [4] and caught in out[4]


def test_screen_refuses_limits_that_mean_nothing() -> None:
    with pytest.raises(ValueError, match="max_norm_ratio must be > 1"):
        agg.screen_outliers(np.ones((3, 2)), 1.0, 0.0)
    with pytest.raises(ValueError, match=r"min_cosine must lie in \[-1, 1\)"):
        agg.screen_outliers(np.ones((3, 2)), 3.0, 1.0)


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="NaN"):
        agg.fedavg(np.array([[np.nan]]), np.ones(1))
    with pytest.raises(ValueError, match="weights"):
        agg.fedavg(np.ones((2, 2)), np.array([1.0]))
    with pytest.raises(ValueError, match="unknown strategy"):
        agg.aggregate("mean-ish", np.ones((2, 2)), np.ones(2))


def test_flatten_roundtrip() -> None:
    arrays = {"a": np.ones((2, 3), np.float32), "b": np.arange(4, dtype=np.float32)}
    names = sorted(arrays)
    v = agg.flatten(arrays, names)
    back = agg.unflatten(v, arrays, names)
    for n in names:
        np.testing.assert_array_equal(back[n], arrays[n])
