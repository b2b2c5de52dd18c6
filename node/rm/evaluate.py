"""Reward-model metrics on preference pairs: accuracy, calibration and length bias.

Definitions (d = r_c - r_r):

- Hard pairs are those with p != 0.5; the labeled winner is chosen when p > 0.5, rejected when
  p < 0.5. Ties (p = 0.5) are excluded from accuracy, ECE and the length rules: a tie has no winner
  to predict. `n` counts hard pairs, `n_total` all pairs.
- accuracy: share of hard pairs where the labeled winner gets the higher reward; d = 0 counts 0.5.
- ece: expected calibration error of q = sigmoid(d), the Bradley-Terry probability that chosen wins.
  Confidence of the predicted winner is max(q, 1 - q) in [0.5, 1]; it is binned into 10 equal-width
  bins over [0.5, 1]; ECE = sum_b (n_b / n) |accuracy_b - mean confidence_b|.
- mean_margin: mean of d over all pairs.
- longer_wins_accuracy: accuracy of the rule "the longer response (in characters) wins" on the hard
  pairs (equal lengths count 0.5) -- the baseline a length-hacking model would reach.
- length_correlation: Pearson and Spearman correlation of reward with response length in characters,
  over every scored response (chosen and rejected); None when either is constant.
- prefers_longer: share of pairs with responses of different length where the model gives the longer
  one the higher reward (equal rewards count 0.5).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.stats import pearsonr, spearmanr
from torch import nn
from transformers import PreTrainedTokenizerBase

from node.rm.data import PairCollator, PairEncoder, PreferencePair, TokenizedPairs, tokenize_pairs
from node.rm.model import rewards

ScoreFn = Callable[[list[str], list[str]], Sequence[float]]
"""(prompts, responses) -> one reward per response, e.g. `RewardScorer.score`."""
ECE_BINS = 10


@dataclass(frozen=True)
class SliceMetrics:
    """Accuracy on one slice (a source or a subset) of the hard pairs."""

    accuracy: float | None
    n: int


@dataclass(frozen=True)
class EvalReport:
    """Metrics of a reward model on a set of pairs; see the module docstring for definitions."""

    n: int
    n_total: int
    n_ties: int
    accuracy: float | None
    by_source: dict[str, SliceMetrics] = field(default_factory=dict)
    by_subset: dict[str, SliceMetrics] = field(default_factory=dict)
    ece: float | None = None
    mean_margin: float | None = None
    longer_wins_accuracy: float | None = None
    length_correlation: dict[str, float | None] = field(default_factory=dict)
    prefers_longer: float | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (slices as {"accuracy", "n"}; unknown values as null)."""
        out: dict[str, Any] = {k: getattr(self, k) for k in (
            "accuracy", "n", "n_total", "n_ties", "ece", "mean_margin", "longer_wins_accuracy",
            "length_correlation", "prefers_longer")}
        out["by_source"] = {k: {"accuracy": v.accuracy, "n": v.n} for k, v in self.by_source.items()}
        out["by_subset"] = {k: {"accuracy": v.accuracy, "n": v.n} for k, v in self.by_subset.items()}
        return out


def report_from_rewards(pairs: Sequence[PreferencePair], r_c: Sequence[float], r_r: Sequence[float]) -> EvalReport:
    """All metrics from the rewards of each pair's chosen and rejected response."""
    if not len(pairs) == len(r_c) == len(r_r):
        raise ValueError(f"{len(pairs)} pairs but {len(r_c)} chosen and {len(r_r)} rejected rewards")
    n_total = len(pairs)
    if n_total == 0:
        return EvalReport(n=0, n_total=0, n_ties=0, accuracy=None)
    rc = np.asarray(r_c, dtype=np.float64)
    rr = np.asarray(r_r, dtype=np.float64)
    p = np.array([q.p for q in pairs])
    len_c = np.array([len(q.chosen) for q in pairs], dtype=np.float64)
    len_r = np.array([len(q.rejected) for q in pairs], dtype=np.float64)
    d = rc - rr  # (N,)
    hard = p != 0.5
    y = np.where(p > 0.5, 1.0, -1.0)  # +1: chosen is the labeled winner
    correct = _sign_agreement(d * y)  # (N,) 1, 0.5 or 0
    longer_correct = _sign_agreement((len_c - len_r) * y)  # (N,)

    by_source: dict[str, list[int]] = defaultdict(list)
    by_subset: dict[str, list[int]] = defaultdict(list)
    for i, q in enumerate(pairs):
        if hard[i]:
            by_source[q.source].append(i)
            if q.subset is not None:
                by_subset[q.subset].append(i)

    differ = len_c != len_r
    lengths = np.concatenate([len_c, len_r])
    scores = np.concatenate([rc, rr])
    return EvalReport(
        n=int(hard.sum()),
        n_total=n_total,
        n_ties=int((~hard).sum()),
        accuracy=_mean(correct[hard]),
        by_source={k: SliceMetrics(_mean(correct[idx]), len(idx)) for k, idx in sorted(by_source.items())},
        by_subset={k: SliceMetrics(_mean(correct[idx]), len(idx)) for k, idx in sorted(by_subset.items())},
        ece=expected_calibration_error(d[hard], y[hard] > 0),
        mean_margin=float(d.mean()),
        longer_wins_accuracy=_mean(longer_correct[hard]),
        length_correlation={"pearson": _correlation(pearsonr, scores, lengths),
                            "spearman": _correlation(spearmanr, scores, lengths)},
        prefers_longer=_mean(_sign_agreement(d * np.sign(len_c - len_r))[differ]),
    )


def expected_calibration_error(d: np.ndarray, chosen_wins: np.ndarray, bins: int = ECE_BINS) -> float | None:
    """ECE of q = sigmoid(d) over `bins` equal-width confidence bins on [0.5, 1]; None when empty."""
    if d.size == 0:
        return None
    q = 1.0 / (1.0 + np.exp(-d))  # (N,) P(chosen wins)
    confidence = np.maximum(q, 1.0 - q)  # (N,) in [0.5, 1]
    hit = np.where(q == 0.5, 0.5, (q > 0.5) == chosen_wins)  # (N,) predicted winner is the labeled one
    which = np.minimum(((confidence - 0.5) * 2 * bins).astype(int), bins - 1)  # (N,) bin index
    ece = 0.0
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            ece += in_bin.mean() * abs(hit[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def _sign_agreement(x: np.ndarray) -> np.ndarray:
    return np.where(x > 0, 1.0, np.where(x < 0, 0.0, 0.5))


def _mean(x: np.ndarray | list[float]) -> float | None:
    return float(np.mean(x)) if len(x) else None


def _correlation(fn: Callable[..., Any], a: np.ndarray, b: np.ndarray) -> float | None:
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    value = float(fn(a, b).statistic)
    return None if math.isnan(value) else value


# ----------------------------------------------------------------------------------------------
# Scoring


def forward_context(device: torch.device) -> Any:
    """How the node's forward passes run on device: on CUDA under bf16 autocast and `cuda_attention`;
    elsewhere as they are (CPU stays fp32)."""
    if device.type != "cuda":
        return nullcontext()
    stack = ExitStack()
    stack.enter_context(torch.autocast("cuda", dtype=torch.bfloat16))
    stack.enter_context(cuda_attention())
    return stack


def cuda_attention() -> Any:
    """Scaled-dot-product attention on CUDA without cuDNN's kernel (flash, memory-efficient or math).

    cuDNN's attention builds an execution plan for every new (batch, length) shape it meets, and the
    node's batches take many lengths (length-grouped training batches, scoring requests). On an H100
    MiniLM training steps ran 336 ms on first sight of their shapes against 26 ms once seen, with
    attention on cuDNN (scripts/bench_reward.py --device cuda: 90 pairs/s against TRL's 358 on batches
    padded mostly to one length). The memory-efficient kernel needs no plan and takes the padding mask.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def pair_rewards(
    model: nn.Module, data: TokenizedPairs, collator: PairCollator, batch_size: int,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(r_c, r_r), each (N,) float32 on CPU: the model's rewards for every pair, in order.

    Pairs are scored longest first so each batch pads little; one forward pass per batch of 2B rows;
    `on_batch(k)` after each batch of k pairs.
    """
    device = next(model.parameters()).device
    order = sorted(range(len(data)), key=lambda i: -max(len(data.chosen[i]), len(data.rejected[i])))
    out = torch.empty(len(data), 2)  # (N, 2)
    was_training = model.training
    model.eval()
    with torch.inference_mode(), forward_context(device):
        for start in range(0, len(order), batch_size):
            idx = order[start: start + batch_size]
            batch = collator([data[i] for i in idx])
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            r = rewards(model, batch).float().view(2, -1).T  # (2B,) -> (B, 2)
            out[idx] = r.cpu()
            if on_batch is not None:
                on_batch(len(idx))
    model.train(was_training)
    return out[:, 0], out[:, 1]


def score_pairs(
    model: nn.Module, pairs: Sequence[PreferencePair], encoder: PairEncoder, batch_size: int,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[TokenizedPairs, torch.Tensor, torch.Tensor]:
    """(tokenized pairs, r_c, r_r): `pairs` truncated by `encoder` and scored by `model` (pair_rewards)."""
    data = tokenize_pairs(pairs, encoder)
    r_c, r_r = pair_rewards(model, data, PairCollator(encoder.pad_token_id), batch_size, on_batch)
    return data, r_c, r_r


def evaluate_pairs(
    scorer: ScoreFn | nn.Module,
    pairs: Sequence[PreferencePair],
    *,
    tokenizer: PreTrainedTokenizerBase | None = None,
    batch_size: int = 32,
    max_length: int = 512,
    min_prompt_tokens: int = 64,
    head_fraction: float = 0.25,
) -> EvalReport:
    """Metrics of a score function (prompts, responses) -> rewards, or of a model with its tokenizer."""
    if isinstance(scorer, nn.Module):
        if tokenizer is None:
            raise ValueError("evaluating a model needs its tokenizer; pass tokenizer=")
        encoder = PairEncoder(tokenizer, max_length, min_prompt_tokens, head_fraction)
        _, r_c, r_r = score_pairs(scorer, pairs, encoder, batch_size)
        return report_from_rewards(pairs, r_c.tolist(), r_r.tolist())
    prompts = [q.prompt for q in pairs] * 2
    responses = [q.chosen for q in pairs] + [q.rejected for q in pairs]
    scores: list[float] = []
    for start in range(0, len(prompts), batch_size):
        scores += [float(s) for s in scorer(prompts[start: start + batch_size], responses[start: start + batch_size])]
    if len(scores) != len(prompts):
        raise ValueError(f"the score function returned {len(scores)} rewards for {len(prompts)} responses")
    return report_from_rewards(pairs, scores[: len(pairs)], scores[len(pairs):])
