"""RL fine-tuning settings: one frozen dataclass, read from node.toml's [rl] table, overridden by CLI flags."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

ALGOS = ("ppo", "grpo", "rloo")
KL_ESTIMATORS = ("k1", "k3")
KL_BUDGET_ACTIONS = ("adapt", "stop")


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
        if self.algo not in ALGOS:
            raise ValueError(f"algo {self.algo!r} is not one of {', '.join(ALGOS)}; pick one of them")
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(f"kl_estimator {self.kl_estimator!r} is not k1 or k3; pick one of them")
        if self.kl_budget_action not in KL_BUDGET_ACTIONS:
            raise ValueError(f"kl_budget_action {self.kl_budget_action!r} is not adapt or stop; pick one")
        if self.algo != "ppo" and self.group_size < 2:
            raise ValueError(f"{self.algo} needs group_size >= 2 (its baseline is the group); pass --group-size 4")
        for name in ("steps", "batch_prompts", "group_size", "ppo_epochs", "num_minibatches", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.rollout_size % self.num_minibatches:
            raise ValueError(f"batch_prompts * group_size = {self.rollout_size} does not divide into "
                             f"{self.num_minibatches} minibatches; change --num-minibatches")
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0; sampling is what RL explores with")

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
        """From node.toml's [rl] table, then `overrides` (None values are ignored)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(table) - known)
        if unknown:
            raise ValueError(f"node.toml [rl] has unknown keys {unknown}; valid keys are the RLConfig fields")
        base = cls(**{k: v for k, v in table.items() if k in known}) if table else cls()
        return replace(base, **{k: v for k, v in overrides.items() if v is not None and k in known})
