"""Reward-model metrics on hand-built toys."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from node.rm.data import PreferencePair
from node.rm.evaluate import evaluate_pairs, expected_calibration_error, forward_context, report_from_rewards


def by_length(prompts: list[str], responses: list[str]) -> list[float]:
    return [float(len(r)) for r in responses]


PAIRS = [
    PreferencePair("q1", "long answer", "short", source="a", subset="x"),  # longer chosen
    PreferencePair("q2", "ok", "much longer", source="a", subset="y"),  # shorter chosen
    PreferencePair("q3", "same1", "same2", source="b"),  # equal lengths
    PreferencePair("q4", "a tie here", "tie", p=0.5, source="b"),
    PreferencePair("q5", "lengthy reply", "no", p=0.9, source="b"),
]


def test_length_scorer_is_the_longer_wins_rule() -> None:
    report = evaluate_pairs(by_length, PAIRS, batch_size=3)
    assert report.n == 4 and report.n_total == 5 and report.n_ties == 1
    assert report.accuracy == report.longer_wins_accuracy == pytest.approx((1 + 0 + 0.5 + 1) / 4)
    assert report.prefers_longer == 1.0
    assert report.length_correlation["pearson"] == pytest.approx(1.0)
    assert report.length_correlation["spearman"] == pytest.approx(1.0)
    assert report.mean_margin == pytest.approx(np.mean([6, -9, 0, 7, 11]))
    assert report.by_source["a"].accuracy == 0.5 and report.by_source["a"].n == 2
    assert report.by_source["b"].accuracy == 0.75 and report.by_source["b"].n == 2
    assert set(report.by_subset) == {"x", "y"}
    js = report.to_json()
    for key in ("accuracy", "n", "by_source", "ece", "longer_wins_accuracy", "mean_margin", "length_correlation",
                "prefers_longer"):
        assert key in js
    assert js["by_source"]["a"] == {"accuracy": 0.5, "n": 2}


def test_accuracy_ece_and_margin_by_hand() -> None:
    pairs = [PreferencePair("q", "c", "r")] * 3 + [PreferencePair("q", "c", "r", p=0.2)]
    r_c = [1.0, 0.0, -2.0, -1.0]
    r_r = [0.0, 0.0, 0.0, 0.0]  # d = [1, 0, -2, -1]; the last pair's labeled winner is `rejected`
    report = report_from_rewards(pairs, r_c, r_r)
    assert report.accuracy == pytest.approx((1 + 0.5 + 0 + 1) / 4)
    assert report.mean_margin == pytest.approx(-0.5)
    s1, s2 = 1 / (1 + math.exp(-1)), 1 / (1 + math.exp(-2))  # confidences 0.731 (bin 4), 0.881 (bin 7)
    # bins: 0.5 -> bin 0 (hit 0.5); sigma(1) twice -> bin 4, both right; sigma(2) -> bin 7, wrong
    expected = 0.25 * abs(0.5 - 0.5) + 0.5 * abs(1 - s1) + 0.25 * abs(0 - s2)
    assert report.ece == pytest.approx(expected)


def test_perfectly_calibrated_predictions_have_small_ece() -> None:
    rng = np.random.default_rng(0)
    d = rng.normal(0, 2, 200_000)
    chosen_wins = rng.random(d.size) < 1 / (1 + np.exp(-d))
    assert expected_calibration_error(d, chosen_wins) < 0.01


def test_empty_and_constant_inputs() -> None:
    assert report_from_rewards([], [], []).accuracy is None
    report = evaluate_pairs(lambda p, r: [0.0] * len(r), PAIRS[:2])
    assert report.accuracy == 0.5 and report.length_correlation["pearson"] is None


def test_cuda_forward_passes_keep_attention_off_cudnn() -> None:
    # cuDNN's attention builds a plan per new batch shape (hundreds of ms each on varying lengths)
    assert torch.backends.cuda.cudnn_sdp_enabled()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # without CUDA, autocast warns and turns itself off
        with forward_context(torch.device("cuda")):
            assert not torch.backends.cuda.cudnn_sdp_enabled()
            assert torch.backends.cuda.mem_efficient_sdp_enabled() and torch.backends.cuda.flash_sdp_enabled()
    assert torch.backends.cuda.cudnn_sdp_enabled()  # restored afterwards
    with forward_context(torch.device("cpu")):
        assert torch.backends.cuda.cudnn_sdp_enabled()
