"""Reward-hacking guards, on by default: the policy optimizes a learned proxy, and these keep it honest.

- KL budget: the mean sequence KL to the reference may not exceed `kl_budget` (adapt beta, or stop).
- Length: an optional per-token penalty past `length_free_tokens` and/or sqrt length normalization.
- Missing EOS: a response that ran into max_new_tokens loses `missing_eos_penalty`.
- Ensemble disagreement: subtract `disagreement_coef * std(members)` (uncertainty-penalized reward).
- Audit: a held-out RM, never optimized against, is logged beside the training reward; when the training
  reward keeps rising while the audit reward falls, the run stops (Goodhart in action).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

import torch

from node.rl.config import RLConfig


def shape_scores(raw: torch.Tensor, lengths: torch.Tensor, has_eos: torch.Tensor, spread: torch.Tensor | None,
                 config: RLConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """RM scores (N,) -> guarded scores (N,), with what each guard took off (batch means)."""
    scores = raw.clone()  # (N,)
    stats: dict[str, float] = {}
    free = max(config.length_free_tokens, 1)
    lengths_f = lengths.to(scores.dtype)
    if config.length_normalize:
        scores = scores / torch.sqrt(torch.clamp(lengths_f / free, min=1.0))  # (N,)
    if config.length_penalty:
        penalty = config.length_penalty * torch.clamp(lengths_f - free, min=0.0)  # (N,)
        scores = scores - penalty
        stats["guard/length_penalty"] = float(penalty.mean())
    if config.missing_eos_penalty:
        penalty = config.missing_eos_penalty * (~has_eos).to(scores.dtype)  # (N,)
        scores = scores - penalty
        stats["guard/eos_penalty"] = float(penalty.mean())
    if spread is not None and config.disagreement_coef:
        penalty = config.disagreement_coef * spread.to(scores.dtype)  # (N,)
        scores = scores - penalty
        stats["guard/disagreement"] = float(spread.mean())
    return scores, stats


@dataclass
class KLController:
    """beta of the KL penalty: fixed, or adaptive toward target_kl (Ziegler et al. 2019, eq. 2):
    e = clip(KL / target - 1, -0.2, 0.2);  beta <- beta * (1 + e * n / horizon)."""

    value: float
    target: float | None = None
    horizon: int = 1000

    @classmethod
    def from_config(cls, config: RLConfig) -> KLController:
        return cls(config.kl_coef, config.target_kl if config.adaptive_kl else None, config.kl_horizon)

    def update(self, kl: float, n: int) -> None:
        if self.target is None:
            return
        error = max(-0.2, min(0.2, kl / self.target - 1.0))
        self.value *= 1.0 + error * n / self.horizon


def kl_budget(kl: float, controller: KLController, config: RLConfig) -> str | None:
    """Enforce the KL budget after a step: None if within it; else double beta ("adapt") or say why to stop.
    In "adapt" mode beta halves back toward kl_coef once KL is under half the budget."""
    if config.kl_budget <= 0 or kl <= config.kl_budget:
        if config.kl_budget > 0 and kl < config.kl_budget / 2 and controller.value > config.kl_coef:
            controller.value = max(config.kl_coef, controller.value / 2.0)
        return None
    if config.kl_budget_action == "stop":
        return f"KL {kl:.3f} exceeded the budget {config.kl_budget}"
    controller.value = max(controller.value, 1e-3) * 2.0
    return None


@dataclass
class AuditMonitor:
    """Fires when, over two consecutive windows, the training reward rose while the audit reward fell,
    `patience` checks in a row."""

    window: int = 5
    patience: int = 2
    tolerance: float = 0.0
    train: list[float] = field(default_factory=list)
    audit: list[float] = field(default_factory=list)
    strikes: int = 0

    @classmethod
    def from_config(cls, config: RLConfig) -> AuditMonitor:
        return cls(config.audit_window, config.audit_patience, config.audit_tolerance)

    def update(self, train_reward: float, audit_reward: float) -> bool:
        """Record one step; True when the audit stop fires."""
        self.train.append(train_reward)
        self.audit.append(audit_reward)
        w = self.window
        if len(self.train) < 2 * w:
            return False
        rising = statistics.fmean(self.train[-w:]) > statistics.fmean(self.train[-2 * w:-w])
        falling = statistics.fmean(self.audit[-w:]) < statistics.fmean(self.audit[-2 * w:-w]) - self.tolerance
        self.strikes = self.strikes + 1 if rising and falling else 0
        return self.strikes >= self.patience
