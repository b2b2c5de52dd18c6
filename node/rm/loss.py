"""Reward-model losses. r_c, r_r: rewards of the chosen and rejected responses, shape (B,).

Per-pair losses are averaged with the pair weights w: sum_i w_i l_i / sum_i w_i.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def weighted_mean(losses: Tensor, weight: Tensor | None = None, total_weight: float | None = None) -> Tensor:
    """sum_i w_i l_i / sum_i w_i (the plain mean when weight is None); () from (B,).

    total_weight replaces the denominator: the weight sum of the whole batch when these losses are one
    piece of it, so that the pieces' weighted means add up to the batch's.
    """
    if total_weight is not None:
        summed = losses.sum() if weight is None else (weight * losses).sum()
        return summed / max(total_weight, torch.finfo(losses.dtype).tiny)
    if weight is None:
        return losses.mean()
    return (weight * losses).sum() / weight.sum().clamp_min(torch.finfo(losses.dtype).tiny)


def bradley_terry_loss(
    r_c: Tensor, r_r: Tensor, margin: Tensor | None = None, weight: Tensor | None = None
) -> Tensor:
    """Bradley-Terry negative log-likelihood of "chosen beats rejected", with an optional margin.

    L = -log sigma(r_c - r_r - m)      (Ouyang et al. 2022; margin m from Touvron et al. 2023)
    """
    d = r_c - r_r  # (B,)
    if margin is not None:
        d = d - margin  # (B,)
    return weighted_mean(-F.logsigmoid(d), weight)


def soft_label_loss(
    r_c: Tensor, r_r: Tensor, p: Tensor, margin: Tensor | None = None, weight: Tensor | None = None,
    total_weight: float | None = None,
) -> Tensor:
    """Cross-entropy of the Bradley-Terry probability against a soft label p = P(chosen is better).

    L = -[p log sigma(d) + (1 - p) log sigma(-d)],   d = r_c - r_r - m

    p = 1 is bradley_terry_loss; p = 0.5 (a tie) is minimized at r_c = r_r.
    """
    d = r_c - r_r  # (B,)
    if margin is not None:
        d = d - margin  # (B,)
    losses = -(p * F.logsigmoid(d) + (1.0 - p) * F.logsigmoid(-d))  # (B,)
    return weighted_mean(losses, weight, total_weight)


def centering_loss(r_c: Tensor, r_r: Tensor, total_pairs: int | None = None) -> Tensor:
    """Reward-centering penalty, pulling rewards toward 0 (Eisenstein et al. 2023; TRL's
    center_rewards_coefficient multiplies it).

    L_center = mean((r_c + r_r)^2)      (the sum over total_pairs when these pairs are a piece of a batch)
    """
    if total_pairs is not None:
        return ((r_c + r_r) ** 2).sum() / total_pairs  # (B,) -> ()
    return ((r_c + r_r) ** 2).mean()  # (B,) -> ()


def reward_loss(
    r_c: Tensor,
    r_r: Tensor,
    p: Tensor,
    margin: Tensor | None = None,
    weight: Tensor | None = None,
    center_coef: float = 0.0,
    whole: tuple[float, int] | None = None,
) -> Tensor:
    """The training objective: soft_label_loss + center_coef * centering_loss.

    whole = (weight sum, pair count) of the batch when these pairs are one piece of it
    (`node.rm.parallel.BatchSplitter`): the pieces' losses then add up to the batch's loss.
    """
    total_weight, total_pairs = whole if whole is not None else (None, None)
    loss = soft_label_loss(r_c, r_r, p, margin, weight, total_weight)
    if center_coef > 0:
        loss = loss + center_coef * centering_loss(r_c, r_r, total_pairs)
    return loss
