"""Reward-model losses equal values computed by hand."""

from __future__ import annotations

import math

import torch
from torch.testing import assert_close

from node.rm.loss import bradley_terry_loss, centering_loss, reward_loss, soft_label_loss

R_C = torch.tensor([2.0, 0.0])
R_R = torch.tensor([1.0, 1.0])  # d = r_c - r_r = [1, -1]
NLL_POS = math.log(1 + math.exp(-1))  # -log sigma(1)
NLL_NEG = math.log(1 + math.exp(1))  # -log sigma(-1)


def test_bradley_terry_hand_value() -> None:
    assert_close(bradley_terry_loss(R_C, R_R), torch.tensor((NLL_POS + NLL_NEG) / 2))


def test_bradley_terry_margin_and_weights() -> None:
    margin = torch.tensor([0.5, 0.0])  # d - m = [0.5, -1]
    assert_close(bradley_terry_loss(R_C, R_R, margin), torch.tensor((math.log(1 + math.exp(-0.5)) + NLL_NEG) / 2))
    weight = torch.tensor([3.0, 1.0])
    assert_close(bradley_terry_loss(R_C, R_R, weight=weight), torch.tensor((3 * NLL_POS + NLL_NEG) / 4))


def test_soft_label_hand_value() -> None:
    p = torch.tensor([0.8, 0.5])
    pair1 = 0.8 * NLL_POS + 0.2 * NLL_NEG
    pair2 = 0.5 * NLL_NEG + 0.5 * NLL_POS  # a tie: symmetric in d
    assert_close(soft_label_loss(R_C, R_R, p), torch.tensor((pair1 + pair2) / 2))


def test_soft_label_with_hard_labels_is_bradley_terry() -> None:
    r_c, r_r, m, w = torch.randn(16), torch.randn(16), torch.rand(16), torch.rand(16)
    assert_close(soft_label_loss(r_c, r_r, torch.ones(16), m, w), bradley_terry_loss(r_c, r_r, m, w))


def test_tie_loss_is_minimal_at_equal_rewards() -> None:
    d = torch.linspace(-2, 2, 41, requires_grad=True)
    losses = torch.stack([soft_label_loss(x.view(1), torch.zeros(1), torch.tensor([0.5])) for x in d])
    assert losses.argmin().item() == 20  # d = 0
    assert_close(losses[20], torch.tensor(math.log(2)))


def test_centering_term() -> None:
    assert_close(centering_loss(R_C, R_R), torch.tensor((3.0**2 + 1.0**2) / 2))
    p = torch.ones(2)
    assert_close(reward_loss(R_C, R_R, p, center_coef=0.01),
                 torch.tensor((NLL_POS + NLL_NEG) / 2 + 0.01 * 5.0))


def test_pieces_of_a_batch_add_up_to_its_loss() -> None:
    r_c, r_r, m, w, p = torch.randn(7), torch.randn(7), torch.rand(7), torch.rand(7) + 0.1, torch.rand(7)
    whole = (w.sum().item(), 7)
    pieces = [[0, 3, 6], [1, 4], [2, 5]]
    summed = sum(reward_loss(r_c[i], r_r[i], p[i], m[i], w[i], 0.01, whole) for i in pieces)
    assert_close(summed, reward_loss(r_c, r_r, p, m, w, 0.01))
