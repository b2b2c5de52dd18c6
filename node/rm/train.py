"""Train the reward model: AdamW, linear warmup/decay, dev evaluation, early stopping, resumable.

Order of one run: load backbone -> tokenize (truncate, never drop) -> [resume] -> epochs of
(length-grouped batches -> forward and backward of 2B rows, on CPU in one piece per thread -> clip -> step)
with dev evaluation -> checkpoint each epoch -> restore the best weights -> final dev report.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from node.progress import bar as progress_bar
from node.rm.config import TrainConfig
from node.rm.data import (
    LengthGroupedBatchSampler,
    PairCollator,
    PairEncoder,
    PreferencePair,
    TokenizedPairs,
    pairs_fingerprint,
    tokenize_pairs,
)
from node.rm.evaluate import EvalReport, forward_context, pair_rewards, report_from_rewards
from node.rm.loss import reward_loss
from node.rm.model import disable_dropout, load_backbone, rewards, unwrap
from node.rm.parallel import BatchSplitter, resolve_workers
from node.rm.preflight import backbone_positions

log = logging.getLogger(__name__)
CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_FILE = "state.pt"
CHECKPOINT_VERSION = 1
CPU = torch.device("cpu")


@dataclass(frozen=True)
class TrainResult:
    """A trained reward model (best dev weights) and how training went."""

    model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    config: TrainConfig
    global_step: int
    epochs_completed: int
    finished: bool
    """False when `epochs_this_run` stopped the run before the last epoch (resume to go on)."""
    stopped_early: bool
    best_step: int
    """Optimizer step of the returned weights (the best dev accuracy; the last step without dev)."""
    best_dev_accuracy: float | None
    dev_report: EvalReport | None
    """Full metrics of the returned weights on the dev pairs (None without dev pairs)."""
    n_train: int
    n_dev: int
    n_truncated_train: int
    n_truncated_dev: int
    train_seconds: float
    """Wall time of the training steps (dev evaluation excluded), summed over resumed runs."""
    pairs_per_second: float
    history: list[dict[str, Any]] = field(default_factory=list)
    """One entry per dev evaluation: step, epoch, train_loss (mean since the last one), dev_accuracy,
    dev_ece, dev_mean_margin."""

    def summary(self) -> dict[str, Any]:
        """JSON-ready facts for the model card (no model, no tokenizer)."""
        return {
            "global_step": self.global_step, "epochs_completed": self.epochs_completed,
            "finished": self.finished, "stopped_early": self.stopped_early, "best_step": self.best_step,
            "best_dev_accuracy": self.best_dev_accuracy,
            "dev": self.dev_report.to_json() if self.dev_report is not None else None,
            "n_train": self.n_train, "n_dev": self.n_dev, "n_truncated_train": self.n_truncated_train,
            "n_truncated_dev": self.n_truncated_dev, "train_seconds": round(self.train_seconds, 3),
            "pairs_per_second": round(self.pairs_per_second, 2), "history": self.history,
            "config": self.config.to_dict(),
        }


@dataclass
class _LoopState:
    """Everything about the loop a checkpoint must restore, besides model/optimizer/scheduler/RNG."""

    epoch: int = 0  # epochs completed
    global_step: int = 0
    best_accuracy: float | None = None
    best_step: int = 0
    best_weights: dict[str, torch.Tensor] | None = None
    bad_evals: int = 0
    stopped_early: bool = False
    train_seconds: float = 0.0
    pairs_seen: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


def resolve_device(name: str) -> torch.device:
    """"auto" -> CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError('rm.device = "cuda" but torch sees no CUDA device; use "auto" or "cpu"')
    return torch.device(name)


def linear_warmup_decay(warmup_steps: int, total_steps: int) -> Any:
    """LR multiplier: 0 -> 1 over warmup_steps, then 1 -> 0 at total_steps (HF's linear schedule)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return factor


def can_fuse(params: Sequence[torch.Tensor]) -> bool:
    """True when torch's fused AdamW takes these parameters (floating point, on CPU or CUDA). On CPU it
    steps MiniLM's 22.7M parameters in ~12 ms instead of 60-80 ms (the default multi-tensor path)."""
    return all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)


def pairs_loss(
    model: nn.Module,
    data: TokenizedPairs,
    collator: PairCollator,
    piece: list[int],
    whole: tuple[float, int] | None,
    *,
    device: torch.device = CPU,
    center_coef: float = 0.0,
) -> torch.Tensor:
    """The training loss of the pairs data[piece]: chosen and rejected rows scored in one forward pass.
    whole: the batch's (weight sum, pair count) when piece is one piece of it (see `reward_loss`)."""
    batch = collator([data[i] for i in piece])
    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    b = len(piece)
    with forward_context(device):
        r = rewards(model, batch).float()  # (2B,) chosen rows first
    return reward_loss(r[:b], r[b:], batch["p"], batch["margin"], batch["weight"], center_coef, whole)


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; weight decay on matrices only (not biases or norms)."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for _, p in params if p.ndim >= 2], "weight_decay": config.weight_decay},
        {"params": [p for _, p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.learning_rate, betas=(0.9, 0.999), eps=1e-8,
                             fused=can_fuse([p for _, p in params]))


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """CPU copy of the trainable parameters (all of them in full fine-tuning; adapters + head in LoRA)."""
    return {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy saved trainable parameters back into the model, checking that every one is there."""
    params = dict(model.named_parameters())
    expected = {n for n, p in params.items() if p.requires_grad}
    if set(state) != expected:
        raise ValueError(
            f"saved weights do not match the model ({len(set(state) ^ expected)} names differ); the checkpoint "
            "was written for another backbone or LoRA setting: resume with the same config or delete it"
        )
    with torch.no_grad():
        for n, t in state.items():
            params[n].copy_(t)


def train_reward_model(
    pairs_train: Sequence[PreferencePair],
    pairs_dev: Sequence[PreferencePair],
    config: TrainConfig,
    *,
    out_dir: str | os.PathLike[str],
    progress: bool = True,
    resume: bool = False,
    epochs_this_run: int | None = None,
) -> TrainResult:
    """Train a reward model on pairs_train, selecting weights by dev accuracy on pairs_dev.

    A checkpoint is written to out_dir/checkpoint after every epoch; resume=True continues from it
    (same config and pairs required). epochs_this_run stops after that many epochs of this call, as
    an interruption would, e.g. to train in time slices.
    """
    if not pairs_train:
        raise ValueError("no training pairs; import comparisons (or ratings) before training")
    if epochs_this_run is not None and epochs_this_run < 1:
        raise ValueError(f"epochs_this_run = {epochs_this_run} must be >= 1 (or None for all epochs)")
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    device = resolve_device(config.device)
    ckpt_path = Path(out_dir) / CHECKPOINT_DIR / CHECKPOINT_FILE
    if resume and not ckpt_path.is_file():
        raise ValueError(f"resume requested but there is no checkpoint at {ckpt_path}; train without resume")
    limit = backbone_positions(config.base_model)
    if limit is not None and config.max_length > limit:  # the position embeddings end there: a batch crashes
        raise ValueError(f"rm.max_length = {config.max_length} is more than the backbone's {limit} "
                         f"positions; use {limit} or less")

    # -------- model, data
    torch.manual_seed(config.seed)  # head and LoRA initialization
    model, tokenizer = load_backbone(
        config.base_model, lora=config.lora, lora_r=config.lora_r, lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout, lora_targets=config.lora_targets,
        mean_pool_init=config.mean_pool_init,
    )
    if config.disable_dropout:
        disable_dropout(model)
    if config.gradient_checkpointing:
        base = unwrap(model)
        if hasattr(base, "activation_checkpointing_enable"):  # newer transformers' name (the old one warns)
            base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if config.lora:
            base.enable_input_require_grads()  # frozen embeddings: give checkpointed blocks a grad input
    model.to(device)
    encoder = PairEncoder(tokenizer, config.max_length, config.min_prompt_tokens, config.prompt_head_fraction)
    train_data = tokenize_pairs(pairs_train, encoder)
    dev_data = tokenize_pairs(pairs_dev, encoder)
    log.info("truncated %d of %d training pairs and %d of %d dev pairs to %d tokens",
             train_data.n_truncated, len(train_data), dev_data.n_truncated, len(dev_data), config.max_length)
    collator = PairCollator(encoder.pad_token_id, config.pad_to_multiple_of)
    sampler = LengthGroupedBatchSampler(
        train_data.lengths, config.batch_size, seed=config.seed, mega_batch_mult=config.mega_batch_mult,
        group_by_length=config.group_by_length,
    )

    # -------- optimizer, schedule
    optimizer = make_optimizer(model, config)
    total_steps = len(sampler) * config.epochs
    warmup_steps = round(config.warmup_ratio * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_warmup_decay(warmup_steps, total_steps))
    fingerprint = {"train": pairs_fingerprint(pairs_train), "dev": pairs_fingerprint(pairs_dev)}
    state = _LoopState()
    if resume:
        state = _load_checkpoint(ckpt_path, model, optimizer, scheduler, sampler, config, fingerprint)
        log.info("resumed from %s at epoch %d, step %d", ckpt_path, state.epoch, state.global_step)

    # -------- loop
    stop_epoch = config.epochs if epochs_this_run is None else min(config.epochs, state.epoch + epochs_this_run)
    trainable = [p for p in model.parameters() if p.requires_grad]
    splitter = BatchSplitter(resolve_workers(config.cpu_workers, device, model, config.batch_size))
    loss_of = functools.partial(pairs_loss, model, train_data, collator, device=device, center_coef=config.center_coef)
    bar = progress_bar(total=total_steps, initial=state.global_step, desc="training", unit="step",
                       disable=not progress)
    postfix: dict[str, str] = {}
    running_loss = torch.zeros((), device=device)
    running_steps = 0
    model.train()
    while state.epoch < stop_epoch and not state.stopped_early:
        sampler.set_epoch(state.epoch)
        t0 = time.perf_counter()
        for batch_idx in sampler:
            b = len(batch_idx)
            loss = splitter.backward(loss_of, batch_idx, trainable, train_data.weight)
            if config.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            state.global_step += 1
            state.pairs_seen += b
            running_loss += loss
            running_steps += 1
            bar.update(1)
            if state.global_step % config.log_every == 0:  # the only per-step sync with the device
                elapsed = state.train_seconds + time.perf_counter() - t0
                postfix["loss"] = f"{running_loss.item() / running_steps:.4f}"
                postfix["pairs/s"] = f"{state.pairs_seen / max(elapsed, 1e-9):.1f}"
                bar.set_postfix(postfix, refresh=False)  # shown with the next update, at the bar's own pace
            if config.eval_every and state.global_step % config.eval_every == 0 and len(dev_data):
                state.train_seconds += _elapsed(t0, device)
                _evaluate(model, pairs_dev, dev_data, collator, config, state, running_loss, running_steps, postfix, bar)
                running_loss.zero_()
                running_steps = 0
                t0 = time.perf_counter()
                if state.stopped_early:
                    break
        state.train_seconds += _elapsed(t0, device)
        evaluated_now = config.eval_every and state.global_step % config.eval_every == 0
        if len(dev_data) and not state.stopped_early and not evaluated_now:
            _evaluate(model, pairs_dev, dev_data, collator, config, state, running_loss, running_steps, postfix, bar)
            running_loss.zero_()
            running_steps = 0
        state.epoch += 1
        _save_checkpoint(ckpt_path, model, optimizer, scheduler, sampler, config, fingerprint, state)
    bar.close()

    # -------- best weights, final report
    if state.best_weights is not None:
        load_trainable_state(model, state.best_weights)
    dev_report = None
    if len(dev_data):
        r_c, r_r = pair_rewards(model, dev_data, collator, config.eval_batch_size)
        dev_report = report_from_rewards(pairs_dev, r_c.tolist(), r_r.tolist())
    model.eval()
    return TrainResult(
        model=model, tokenizer=tokenizer, config=config, global_step=state.global_step,
        epochs_completed=state.epoch, finished=state.epoch >= config.epochs or state.stopped_early,
        stopped_early=state.stopped_early,
        best_step=state.best_step if state.best_weights is not None else state.global_step,
        best_dev_accuracy=state.best_accuracy, dev_report=dev_report, n_train=len(train_data),
        n_dev=len(dev_data), n_truncated_train=train_data.n_truncated, n_truncated_dev=dev_data.n_truncated,
        train_seconds=state.train_seconds, pairs_per_second=state.pairs_seen / max(state.train_seconds, 1e-9),
        history=state.history,
    )


def _evaluate(
    model: nn.Module,
    dev_pairs: Sequence[PreferencePair],
    dev_data: TokenizedPairs,
    collator: PairCollator,
    config: TrainConfig,
    state: _LoopState,
    running_loss: torch.Tensor,
    running_steps: int,
    postfix: dict[str, str],
    bar: Any,
) -> None:
    """Dev metrics; keep the weights of the best dev accuracy (hard pairs); count patience."""
    r_c, r_r = pair_rewards(model, dev_data, collator, config.eval_batch_size)
    report = report_from_rewards(dev_pairs, r_c.tolist(), r_r.tolist())
    accuracy = report.accuracy
    train_loss = running_loss.item() / running_steps if running_steps else None
    state.history.append({"step": state.global_step, "epoch": state.epoch + 1, "train_loss": train_loss,
                          "dev_accuracy": accuracy, "dev_ece": report.ece, "dev_mean_margin": report.mean_margin})
    postfix["dev_acc"] = "n/a" if accuracy is None else f"{accuracy:.3f}"
    bar.set_postfix(postfix)
    if accuracy is None:
        return
    if state.best_accuracy is None or accuracy > state.best_accuracy:
        state.best_accuracy, state.best_step, state.bad_evals = accuracy, state.global_step, 0
        state.best_weights = trainable_state(model)
    else:
        state.bad_evals += 1
        if config.patience and state.bad_evals >= config.patience:
            state.stopped_early = True
            log.info("early stop at step %d: no better dev accuracy in %d evaluations (best %.4f at step %d)",
                     state.global_step, state.bad_evals, state.best_accuracy, state.best_step)


def _elapsed(t0: float, device: torch.device) -> float:
    """Seconds since t0, after the device has finished the queued work (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _save_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    sampler: LengthGroupedBatchSampler,
    config: TrainConfig,
    fingerprint: dict[str, str],
    state: _LoopState,
) -> None:
    """Write the checkpoint atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "version": CHECKPOINT_VERSION, "config": config.training_fields(), "fingerprint": fingerprint,
        "model": trainable_state(model), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "sampler": sampler.state_dict(), "rng": _rng_state(),
        "loop": {k: v for k, v in vars(state).items()},
    }
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def _load_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    sampler: LengthGroupedBatchSampler,
    config: TrainConfig,
    fingerprint: dict[str, str],
) -> _LoopState:
    """Restore a checkpoint into the freshly built model, optimizer, scheduler and sampler."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path} has checkpoint version {payload.get('version')}, expected {CHECKPOINT_VERSION}; "
                         "delete it and train from the start")
    saved, now = payload["config"], config.training_fields()
    changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    if changed:
        diffs = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in changed)
        raise ValueError(f"the checkpoint at {path} was written with another config ({diffs}); resume with the "
                         "same settings or delete the checkpoint folder to start over")
    for side in ("train", "dev"):
        if payload["fingerprint"][side] != fingerprint[side]:
            raise ValueError(f"the {side} pairs differ from the ones the checkpoint at {path} was trained on; "
                             "resume with the same pairs or delete the checkpoint folder to start over")
    load_trainable_state(model, payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    sampler.load_state_dict(payload["sampler"])
    torch.set_rng_state(payload["rng"]["torch"])
    if "cuda" in payload["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(payload["rng"]["cuda"])
    return _LoopState(**payload["loop"])
