"""RL fine-tuning settings: one frozen dataclass, read from node.toml's [rl] table, overridden by CLI flags."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, NoReturn

ALGOS = ("ppo", "grpo", "rloo")
KL_ESTIMATORS = ("k1", "k3")
KL_BUDGET_ACTIONS = ("adapt", "stop")
_CHOICES = {"algo": ALGOS, "kl_estimator": KL_ESTIMATORS, "kl_budget_action": KL_BUDGET_ACTIONS}
_AT_LEAST_ONE = ("steps", "batch_prompts", "group_size", "ppo_epochs", "num_minibatches", "max_new_tokens",
                 "max_prompt_tokens", "kl_horizon", "audit_window", "audit_patience", "lora_r", "lora_alpha")
_NOT_NEGATIVE = {  # field -> what 0 means
    "top_k": "off", "num_threads": "torch's default", "kl_coef": "no KL penalty", "kl_budget": "no budget",
    "length_penalty": "off", "missing_eos_penalty": "off", "disagreement_coef": "off",
    "audit_tolerance": "any decrease counts", "length_free_tokens": "", "vf_coef": "",
}
_POSITIVE = ("learning_rate", "max_grad_norm", "clip_value", "temperature", "target_kl", "reward_clip")
_INTERVALS: dict[str, tuple[float, float, str]] = {  # field -> (low, high, "[]" / "(]" / "[)" / "()")
    "top_p": (0.0, 1.0, "(]"), "clip_eps": (0.0, 1.0, "()"), "gamma": (0.0, 1.0, "[]"),
    "lam": (0.0, 1.0, "[]"), "lora_dropout": (0.0, 1.0, "[)"),
}
MAX_SEED = 2**63 - 1
"""Largest seed torch.manual_seed takes on every platform."""


class InvalidRLSetting(ValueError):
    """One RLConfig field has the wrong type or is out of range: `field`, its `value` and the `allowed` range.

    The CLI names the flag or the node.toml key that gave the value; the message alone names the field.
    """

    def __init__(self, field: str, value: object, allowed: str, default: object) -> None:
        self.field, self.value, self.allowed = field, value, allowed
        self.fix = f"the default is {show_value(default)}"
        super().__init__(f"[rl] {field} = {show_value(value)}: {allowed}; {self.fix}")


def show_value(value: object) -> str:
    """A setting's value as a user typed it: -1 rather than -1.0, strings quoted."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return format(value, "g")
    return repr(value) if isinstance(value, str) else str(value)


@dataclass(frozen=True)
class RLConfig:
    """Everything one RL run needs besides the policy, the reward and the prompts."""

    # ---- algorithm ------------------------------------------------------------------------------
    algo: str = "ppo"
    """Advantage estimator: "ppo" (value head + GAE), "grpo" (group-normalized scores) or "rloo"
    (leave-one-out baseline). All three share the rollout and the clipped policy loss."""
    steps: int = 100
    """RL steps; one step = one rollout batch + `ppo_epochs` passes of minibatch updates over it."""
    batch_prompts: int = 8
    """Prompts per step."""
    group_size: int = 1
    """Samples per prompt. grpo/rloo need >= 2 (their baseline is the group); ppo usually uses 1."""
    ppo_epochs: int = 2
    """Passes over each rollout batch."""
    num_minibatches: int = 2
    """Minibatches per pass; the rollout batch (batch_prompts * group_size) must divide by it."""
    learning_rate: float = 1e-4
    """AdamW learning rate (LoRA adapters tolerate 1e-4..1e-3; full fine-tuning wants ~1e-5)."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm."""
    clip_eps: float = 0.2
    """PPO ratio clip: r in [1 - eps, 1 + eps]."""
    vf_coef: float = 0.1
    """Weight of the value loss (ppo only)."""
    clip_value: float = 0.2
    """Value clip around the rollout's values (ppo only)."""
    gamma: float = 1.0
    """Discount in GAE (1.0: an episode is one response)."""
    lam: float = 0.95
    """GAE lambda."""
    whiten_advantages: bool = True
    """Normalize advantages over the batch's response tokens (ppo)."""

    # ---- sampling -------------------------------------------------------------------------------
    max_new_tokens: int = 48
    """Response length cap; generation also stops at EOS."""
    temperature: float = 1.0
    """Sampling temperature; log-probs are computed from logits / temperature, as sampled."""
    top_p: float = 1.0
    """Nucleus sampling threshold (1.0: off)."""
    top_k: int = 0
    """Top-k sampling (0: off)."""
    max_prompt_tokens: int = 256
    """Prompts are cut to their last this many tokens."""
    chat_template: bool = True
    """Wrap prompts in the tokenizer's chat template when it has one."""

    # ---- rewards and KL -------------------------------------------------------------------------
    kl_coef: float = 0.05
    """Initial beta of the per-token KL penalty to the frozen reference policy."""
    kl_estimator: str = "k1"
    """"k1": log p - log q (unbiased, can be negative per token); "k3": (q/p - 1) - log(q/p) (>= 0)."""
    adaptive_kl: bool = False
    """Adapt beta toward `target_kl` (Ziegler et al. 2019) instead of keeping it fixed."""
    target_kl: float = 2.0
    """Target sequence KL (nats) for the adaptive controller."""
    kl_horizon: int = 1000
    """Horizon of the adaptive controller (samples)."""
    whiten_rewards: bool = True
    """Normalize the scores of each batch to mean 0, std 1 before clipping (shift/scale free RMs)."""
    reward_clip: float = 5.0
    """Scores are clipped to [-reward_clip, reward_clip] after whitening."""

    # ---- guards against reward hacking (guards.py); on by default -------------------------------
    kl_budget: float = 8.0
    """Largest mean sequence KL (nats) allowed; above it `kl_budget_action` happens. 0: no budget."""
    kl_budget_action: str = "adapt"
    """"adapt": double beta each step over budget; "stop": end the run."""
    length_penalty: float = 0.0
    """Subtracted from the score per response token beyond `length_free_tokens`."""
    length_free_tokens: int = 32
    """Tokens a response may use before the length penalty applies."""
    length_normalize: bool = False
    """Divide the RM score by sqrt(response tokens / length_free_tokens) when longer (length-hacking guard)."""
    missing_eos_penalty: float = 1.0
    """Subtracted from the score of a response that hit max_new_tokens without EOS."""
    disagreement_coef: float = 0.5
    """Ensemble rewards: subtract this times the members' std (uncertainty penalty)."""
    audit_window: int = 5
    """Audit stop: compare the mean of the last `audit_window` steps with the `audit_window` before."""
    audit_patience: int = 2
    """Audit stop fires after this many consecutive checks with training reward up and audit down."""
    audit_tolerance: float = 0.0
    """Audit decrease (in audit-reward units) that counts as "falling"; 0: any decrease."""
    audit_stop: bool = True
    """End the run when the audit stop fires (False: only log it)."""

    # ---- model ----------------------------------------------------------------------------------
    lora: bool = True
    """Train LoRA adapters (the reference is the same model with adapters off); False: full fine-tuning
    with a frozen copy as reference."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA alpha."""
    lora_dropout: float = 0.0
    """LoRA dropout (0: rollout and update log-probs agree exactly)."""
    seed: int = 0
    """Seed for sampling, prompt order and the value head."""
    num_threads: int = 0
    """torch threads (0: leave torch's default)."""
    device: str = "cpu"
    """"cpu", "cuda" or "mps"."""

    def __post_init__(self) -> None:
        self._check_fields()
        if self.algo != "ppo" and self.group_size < 2:
            raise ValueError(f"{self.algo} needs group_size >= 2 (its baseline is the group); pass --group-size 4")
        if self.rollout_size % self.num_minibatches:
            raise ValueError(f"batch_prompts * group_size = {self.rollout_size} does not divide into "
                             f"{self.num_minibatches} minibatches; change --num-minibatches")

    def _check_fields(self) -> None:
        """Every field of the right type and in range (InvalidRLSetting), before any model is loaded."""
        for f in fields(self):
            value, default = getattr(self, f.name), f.default
            if isinstance(default, bool):
                ok, allowed = isinstance(value, bool), "must be true or false"
            elif isinstance(default, int):
                ok, allowed = isinstance(value, int) and not isinstance(value, bool), "must be a whole number"
            elif isinstance(default, float):
                ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                allowed = "must be a finite number"
            else:
                ok, allowed = isinstance(value, str), "must be a string"
            if not ok:
                raise InvalidRLSetting(f.name, value, allowed, default)
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                self._refuse(name, f"must be one of {', '.join(choices)}")
        for name in _AT_LEAST_ONE:
            if getattr(self, name) < 1:
                self._refuse(name, "must be >= 1")
        for name, zero in _NOT_NEGATIVE.items():
            if getattr(self, name) < 0:
                self._refuse(name, f"must be >= 0 (0: {zero})" if zero else "must be >= 0")
        for name in _POSITIVE:
            if not getattr(self, name) > 0:
                self._refuse(name, "must be > 0")
        for name, (low, high, ends) in _INTERVALS.items():
            value = getattr(self, name)
            above = value >= low if ends[0] == "[" else value > low
            below = value <= high if ends[1] == "]" else value < high
            if not (above and below):
                self._refuse(name, f"must lie in {ends[0]}{low:g}, {high:g}{ends[1]}")
        if not 0 <= self.seed <= MAX_SEED:
            self._refuse("seed", "must lie in [0, 2**63 - 1]")

    def _refuse(self, name: str, allowed: str) -> NoReturn:
        default = next(f.default for f in fields(self) if f.name == name)
        raise InvalidRLSetting(name, getattr(self, name), allowed, default)

    @property
    def rollout_size(self) -> int:
        """Responses per step."""
        return self.batch_prompts * self.group_size

    @property
    def minibatch_size(self) -> int:
        """Responses per gradient step."""
        return self.rollout_size // self.num_minibatches

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_mapping(cls, table: Mapping[str, Any], **overrides: Any) -> RLConfig:
        """From node.toml's [rl] table, then `overrides` (None values are ignored); checked once, merged."""
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(table) - set(known))
        if unknown:
            raise ValueError(f"node.toml [rl] has unknown keys {unknown}; the known keys are "
                             f"{', '.join(known)}")
        return cls(**{**table, **{k: v for k, v in overrides.items() if v is not None and k in known}})
