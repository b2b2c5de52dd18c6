"""Reward-model training configuration: one frozen dataclass, every field documented.

Loaded from the `[rm]` table of `node.toml` with `TrainConfig.from_dict`, overridable by CLI flags.
TOML has no null, so "off" is spelled 0 where a field can be switched off.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

DEVICES = ("auto", "cpu", "cuda", "mps")
LORA_TARGET_SETS = ("attention", "all-linear")  # node.rm.model.LORA_TARGET_SETS, kept here without importing torch

# Fields that only change how fast or how loudly training runs. Every other field must be the same
# in a checkpoint and in the run that resumes it.
RUNTIME_FIELDS = frozenset({"num_threads", "cpu_workers", "device", "log_every", "eval_batch_size"})


@dataclass(frozen=True)
class TrainConfig:
    """How the node trains its reward model (Bradley-Terry on preference pairs)."""

    base_model: str = "minilm"
    """Backbone: "minilm" (the bundled all-MiniLM-L6-v2) or a local Hugging Face model folder
    (encoder like BERT, or a decoder LLM like Llama). Nothing is ever downloaded."""
    lora: bool = False
    """Train LoRA adapters (+ the reward head) instead of every weight. The saved artifact has the
    adapters merged, so it loads as a plain model."""
    lora_r: int = 8
    """LoRA rank."""
    lora_alpha: int = 16
    """LoRA scaling numerator: the adapter update is scaled by lora_alpha / lora_r."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA branch input."""
    lora_targets: str = "attention"
    """Layers that get adapters: "attention" (query/value projections) or "all-linear" (every linear
    layer but the reward head: attention, feed-forward and pooler)."""
    mean_pool_init: bool = False
    """Start an encoder's [CLS] reward from the mean of the text's tokens: the last layer's query
    projection is zeroed when the reward head is new, so [CLS] first attends evenly to every token
    (sentence encoders such as all-MiniLM-L6-v2 were trained to be mean-pooled); training then
    sharpens that attention. The model stays a stock sequence classifier. No effect on decoders or
    on a base that is already a reward model (see `node.rm.model.init_mean_pooling`). Off by
    default: on MiniLM and the bundled data it raised hh-rlhf by ~3-4 points and lowered
    finegrained-rlhf by ~2-3 over 4 seeds, no clear gain overall (README, Performance)."""

    max_length: int = 256
    """Token budget of one (prompt, response) sequence, special tokens included. Longer pairs are
    truncated, never dropped: the response is kept whole where possible and the middle of the
    prompt is cut (see `node.rm.data.truncate_pair`)."""
    min_prompt_tokens: int = 64
    """Prompt tokens always kept when the response is long: a response is capped at
    max_length - specials - min_prompt_tokens tokens (its start is kept)."""
    prompt_head_fraction: float = 0.25
    """Share of a cut prompt's budget kept from its start (the question / instructions); the rest
    is kept from its end (the last turn)."""

    batch_size: int = 16
    """Pairs per optimizer step; one forward pass sees 2 * batch_size sequences."""
    eval_batch_size: int = 64
    """Pairs per forward pass when scoring the dev set."""
    epochs: int = 1
    """Passes over the training pairs."""
    learning_rate: float = 5e-5
    """Peak AdamW learning rate (after warmup). About 1e-4 suits LoRA."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay, applied to matrices only (not biases or norms)."""
    warmup_ratio: float = 0.05
    """Fraction of all steps spent warming the learning rate up linearly from 0; it then decays
    linearly to 0 at the last step."""
    max_grad_norm: float = 1.0
    """Global gradient-norm clip; 0 disables clipping."""
    center_coef: float = 0.0
    """Reward-centering coefficient c: adds c * mean((r_c + r_r)^2) to the loss, keeping rewards
    near 0 (TRL's center_rewards_coefficient; 0.01 is usual). 0 disables it."""

    eval_every: int = 0
    """Score the dev set every this many optimizer steps, and at the end of every epoch.
    0: only at the end of every epoch."""
    patience: int = 0
    """Early stopping: stop after this many dev evaluations in a row without a new best dev
    accuracy. 0: never stop early. The best weights are always the ones returned."""
    dev_fraction: float = 0.1
    """Share of prompts held out for dev by `split_by_prompt` (all pairs of a prompt together)."""

    group_by_length: bool = True
    """Batch pairs of similar length (less padding): sort within mega-batches, shuffle batches."""
    mega_batch_mult: int = 50
    """Mega-batch size in batches for length grouping (Hugging Face's LengthGroupedSampler uses 50)."""
    pad_to_multiple_of: int = 0
    """Round each batch's padded length up to a multiple of this (8 helps tensor cores); 0: pad
    only to the longest sequence in the batch."""
    disable_dropout: bool = True
    """Turn every dropout off: with chosen and rejected scored in one pass, dropout only adds noise
    to r_c - r_r (TRL's RewardConfig.disable_dropout does the same)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about 30% slower."""

    seed: int = 0
    """Seeds the head initialization, the LoRA initialization and the batch order. Same seed, same
    data, same thread count on CPU: identical weights."""
    num_threads: int = 0
    """torch intra-op CPU threads (torch.set_num_threads); 0 leaves torch's default."""
    cpu_workers: int = 0
    """On CPU, cut each batch into this many pieces, run each on its own thread with one intra-op
    thread and add their gradients (same loss and gradient up to float rounding; see
    `node.rm.parallel`). 0: one piece per intra-op thread on 2 to 8 threads when each piece gets 2 pairs
    or more, else one pass; 1: one multi-threaded pass. Dropout forces one piece. MiniLM trained 1.15x
    faster as two pieces on 2 cores and 1.13x as eight on 8, but 0.75x as sixteen on 16."""
    device: str = "auto"
    """"auto" (CUDA if available, else CPU), "cpu", "cuda" or "mps". On CUDA the forward pass runs
    under bf16 autocast with fp32 master weights; on CPU everything is fp32."""
    log_every: int = 10
    """Update the progress bar's loss every this many steps (each update syncs with the device)."""

    def __post_init__(self) -> None:
        positive = ("lora_r", "lora_alpha", "max_length", "batch_size", "eval_batch_size", "epochs",
                    "mega_batch_mult", "log_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"rm.{name} = {getattr(self, name)} must be >= 1; set it to a positive integer")
        non_negative = ("min_prompt_tokens", "weight_decay", "warmup_ratio", "max_grad_norm", "center_coef",
                        "eval_every", "patience", "pad_to_multiple_of", "num_threads", "cpu_workers",
                        "lora_dropout")
        for name in non_negative:
            if getattr(self, name) < 0:
                raise ValueError(f"rm.{name} = {getattr(self, name)} is negative; use 0 or more (0 switches it off)")
        if not self.learning_rate > 0:
            raise ValueError(f"rm.learning_rate = {self.learning_rate} must be > 0; try 5e-5 (1e-4 for LoRA)")
        if self.min_prompt_tokens >= self.max_length:
            raise ValueError(
                f"rm.min_prompt_tokens = {self.min_prompt_tokens} leaves no room for the response within "
                f"rm.max_length = {self.max_length}; make min_prompt_tokens smaller than max_length"
            )
        for name in ("prompt_head_fraction", "warmup_ratio", "lora_dropout"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"rm.{name} = {getattr(self, name)} must lie in [0, 1]")
        if not 0.0 <= self.dev_fraction < 1.0:
            raise ValueError(f"rm.dev_fraction = {self.dev_fraction} must lie in [0, 1); 0.1 holds out 10% of prompts")
        if self.lora_targets not in LORA_TARGET_SETS:
            raise ValueError(f"rm.lora_targets = {self.lora_targets!r} is unknown; use one of {', '.join(LORA_TARGET_SETS)}")
        if self.device not in DEVICES:
            raise ValueError(f"rm.device = {self.device!r} is unknown; use one of {', '.join(DEVICES)}")
        if not self.base_model:
            raise ValueError('rm.base_model is empty; use "minilm" or the path of a local model folder')

    @property
    def max_response_tokens(self) -> int:
        """Response cap before special tokens: what is left of max_length after min_prompt_tokens."""
        return self.max_length - self.min_prompt_tokens

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict of every field."""
        return asdict(self)

    def training_fields(self) -> dict[str, Any]:
        """The fields a resumed run must share with the checkpoint it resumes."""
        return {k: v for k, v in self.to_dict().items() if k not in RUNTIME_FIELDS}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a `[rm]` table; unknown keys are an error, not silently ignored."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"unknown reward-model setting(s) {', '.join(unknown)} in [rm]; known: {', '.join(sorted(known))}"
            )
        return cls(**values)
