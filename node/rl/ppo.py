"""RL fine-tuning against a reward model: PPO with a value head and GAE, or GRPO / RLOO, in one loop.

Each step reads top to bottom (CleanRL's ppo.py order):
rollout -> rewards & KL -> advantages (gae | grpo | rloo) -> flatten -> minibatch update -> log.

Notation: N responses per step, P prompt columns (left-padded), R response columns (right-padded after
EOS). logp = log pi_theta(a_t | s_t), ref = log pi_ref(a_t | s_t), both from logits / temperature.
"""

from __future__ import annotations

import math
import random
import signal
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerBase

from node.rl.config import RLConfig
from node.rl.generate import encode_prompts, sample
from node.rl.guards import AuditMonitor, KLController, kl_budget, shape_scores
from node.rl.policy import PolicyWithValue
from node.rl.rewards import FunctionReward, RewardSource

# ---- the math, one function per equation -------------------------------------------------------


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x over the positions where mask is 1."""
    return (x * mask).sum() / mask.sum().clamp(min=1)


def whiten(x: torch.Tensor, mask: torch.Tensor | None = None, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the masked entries (all entries without a mask)."""
    if mask is None:
        mask = torch.ones_like(x)
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + eps) * mask


def kl_per_token(logp: torch.Tensor, ref: torch.Tensor, estimator: str) -> torch.Tensor:
    """k1 = log p - log q;  k3 = (q/p - 1) - log(q/p)  (Schulman 2020, "Approximating KL divergence")."""
    log_ratio = logp - ref  # (N, R)
    if estimator == "k1":
        return log_ratio
    return torch.expm1(-log_ratio) + log_ratio


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation over response tokens (Schulman et al. 2016).

    delta_t = r_t + gamma V(s_{t+1}) - V(s_t);  A_t = delta_t + gamma lam A_{t+1};  returns = A + V.
    Positions past the response have r = V = 0, so the episode ends at its last real token.
    """
    rewards, values = rewards * mask, values * mask  # (N, R)
    n_steps = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])  # (N,)
    for t in reversed(range(n_steps)):
        next_value = values[:, t + 1] if t + 1 < n_steps else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = delta + gamma * lam * last
        advantages[:, t] = last
    return advantages * mask, (advantages + values) * mask


def group_advantages(scores: torch.Tensor, group_size: int, estimator: str, eps: float = 1e-6) -> torch.Tensor:
    """Sequence advantages (N,) from scores (N,) in consecutive groups of `group_size` samples per prompt.

    grpo: A_i = (s_i - mean_g) / (std_g + eps)  (Shao et al. 2024);
    rloo: A_i = s_i - mean_{j != i} s_j          (Ahmadian et al. 2024).
    """
    s = scores.view(-1, group_size)  # (B, G)
    if estimator == "grpo":
        return ((s - s.mean(1, keepdim=True)) / (s.std(1, keepdim=True) + eps)).view(-1)
    baseline = (s.sum(1, keepdim=True) - s) / (group_size - 1)  # (B, G) leave-one-out mean
    return (s - baseline).view(-1)


def clipped_policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                        clip_eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """L^CLIP = -E_t[min(rho_t A_t, clip(rho_t, 1 - eps, 1 + eps) A_t)], rho_t = exp(logp - old_logp).
    Returns the loss and the fraction of tokens where the clip was active."""
    ratio = torch.exp(logp - old_logp)  # (n, R)
    pg1 = -advantages * ratio
    pg2 = -advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    loss = masked_mean(torch.max(pg1, pg2), mask)
    clipfrac = masked_mean((pg2 > pg1).float(), mask)
    return loss, clipfrac


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                       clip: float) -> torch.Tensor:
    """L^VF = 1/2 E_t[max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2)]."""
    v_clipped = old_values + torch.clamp(values - old_values, -clip, clip)  # (n, R)
    return 0.5 * masked_mean(torch.max((values - returns) ** 2, (v_clipped - returns) ** 2), mask)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """H = logsumexp(z) - sum softmax(z) z, per position (..., V) -> (...)."""
    p = F.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (p * logits).sum(-1)


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[token]: (n, R, V), (n, R) -> (n, R)."""
    return torch.gather(F.log_softmax(logits.float(), dim=-1), 2, tokens.unsqueeze(-1)).squeeze(-1)


# ---- the loop -----------------------------------------------------------------------------------


@dataclass
class RLResult:
    """What a run did: per-step logs and why it stopped early (None: it ran all steps)."""

    history: list[dict[str, float]] = field(default_factory=list)
    stopped: str | None = None


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during `train`: `result` holds the completed steps. `consistent`: the policy is as of the last
    of them; False when a second Ctrl-C stopped an update midway, so the weights match no step (do not save
    them as the run's policy). Uncaught, it ends the program like any Ctrl-C."""

    def __init__(self, result: RLResult, *, consistent: bool = True) -> None:
        done = len(result.history)
        super().__init__(f"interrupted after {done} completed steps" if consistent else
                         f"interrupted mid-update after {done} completed steps; the weights match no step")
        self.result = result
        self.consistent = consistent


class _DeferredInterrupt:
    """Holds Ctrl-C off while a step changes the weights, from `hold` (before its update) to `release` (after
    its log's append): a first SIGINT is only recorded (`requested`), and `train` stops once the step is
    logged; a second raises at once, mid-update. Undoing a cut-short update instead would take a copy of the
    weights every step: of the whole model with full fine-tuning.

    It holds off only in the main thread while Python's default SIGINT handler is installed: in another
    thread KeyboardInterrupt never arrives, and a handler someone installed is theirs, left alone. Either way
    a KeyboardInterrupt while `held` means weights that match no step. `release` puts the replaced handler
    back; `train` calls it again however the step ends."""

    NOTICE = ("Ctrl-C: stopping after this step's update "
              "(press Ctrl-C again to stop now without saving this run's policy)")

    def __init__(self) -> None:
        self.held = False
        self.requested = False
        self._previous: Any = None

    def hold(self) -> None:
        self.held = True
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._previous = signal.signal(signal.SIGINT, self._handle)

    def release(self) -> None:
        self.held = False
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _handle(self, _signum: int, _frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        try:
            print(self.NOTICE, file=sys.stderr, flush=True)
        except (OSError, RuntimeError, ValueError):  # a closed stderr, or one this signal cut mid-write
            pass


def _response_forward(policy: PolicyWithValue, sequences: torch.Tensor, attention_mask: torch.Tensor, width: int,
                      temperature: float) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Response log-probs (n, R), values (n, R) and response logits (n, R, V) of the current policy."""
    logits, values = policy(sequences, attention_mask)  # (n, P+R, V), (n, P+R)
    logits = logits[:, width - 1:-1] / temperature  # (n, R, V): position t predicts token t + 1
    logp = token_logprobs(logits, sequences[:, width:])
    return logp, None if values is None else values[:, width - 1:-1], logits


@torch.no_grad()
def _rollout_forward(policy: PolicyWithValue, sequences: torch.Tensor, attention_mask: torch.Tensor, width: int,
                     temperature: float, chunk: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Old log-probs (N, R), reference log-probs (N, R) and values (N, R) in chunks of `chunk` rows."""
    logps, refs, values = [], [], []
    for i in range(0, sequences.shape[0], chunk):
        seq, att = sequences[i:i + chunk], attention_mask[i:i + chunk]
        logp, value, _ = _response_forward(policy, seq, att, width, temperature)
        ref_logits = policy.ref_logits(seq, att)[:, width - 1:-1] / temperature
        logps.append(logp)
        refs.append(token_logprobs(ref_logits, seq[:, width:]))
        if value is not None:
            values.append(value)
    return torch.cat(logps), torch.cat(refs), torch.cat(values) if values else None


def train(policy: PolicyWithValue, tokenizer: PreTrainedTokenizerBase, reward: RewardSource | Callable[..., Any],
          prompts: Sequence[str], config: RLConfig, *, audit: RewardSource | Callable[..., Any] | None = None,
          on_step: Callable[[dict[str, float]], None] | None = None) -> RLResult:
    """Fine-tune `policy` in place for config.steps steps; `on_step` gets each step's log.

    Ctrl-C raises TrainingInterrupted with the completed steps, the policy as of the last of them: during a
    step's update (main thread, default SIGINT handler) it waits until the step is logged and on_step called,
    and a second Ctrl-C there raises at once with `consistent=False` (the weights match no step)."""
    result, deferred = RLResult(), _DeferredInterrupt()
    try:
        return _train(policy, tokenizer, reward, prompts, config, audit, on_step, result, deferred)
    except TrainingInterrupted:
        raise
    except KeyboardInterrupt:
        raise TrainingInterrupted(result, consistent=not deferred.held) from None
    finally:
        deferred.release()


def _train(policy: PolicyWithValue, tokenizer: PreTrainedTokenizerBase,
           reward: RewardSource | Callable[..., Any], prompts: Sequence[str], config: RLConfig,
           audit: RewardSource | Callable[..., Any] | None,
           on_step: Callable[[dict[str, float]], None] | None, result: RLResult,
           deferred: _DeferredInterrupt) -> RLResult:
    """The loop of `train`: each step's log goes to `result`; `deferred` holds Ctrl-C off during updates."""
    if not prompts:
        raise ValueError("no prompts to train on; pass --prompts FILE or --source NAME with stored prompts")
    if not isinstance(reward, RewardSource):
        reward = FunctionReward(reward)
    if audit is not None and not isinstance(audit, RewardSource):
        audit = FunctionReward(audit, name="audit")
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    device = torch.device(config.device)
    policy.to(device).eval()  # eval: no dropout, so rollout and update log-probs agree
    optimizer = torch.optim.AdamW(policy.trainable_parameters(), lr=config.learning_rate, eps=1e-5)
    kl_ctl = KLController.from_config(config)
    monitor = AuditMonitor.from_config(config)
    encoded = encode_prompts(tokenizer, prompts, chat_template=config.chat_template,
                             max_tokens=config.max_prompt_tokens)
    order: list[int] = []

    for step in range(1, config.steps + 1):
        t0 = time.perf_counter()
        # ---- rollout: B prompts x G samples, stop at EOS ---------------------------------------
        if len(order) < config.batch_prompts:
            fresh = list(range(len(prompts)))
            rng.shuffle(fresh)
            order += fresh * math.ceil(config.batch_prompts / len(fresh))
        idx = [order.pop(0) for _ in range(config.batch_prompts)]
        idx = [i for i in idx for _ in range(config.group_size)]  # (N,) groups are consecutive
        samples = sample(policy.generator, tokenizer, [encoded[i] for i in idx], max_new_tokens=config.max_new_tokens,
                         temperature=config.temperature, top_p=config.top_p, top_k=config.top_k, device=device)
        width, mask = samples.prompt_width, samples.mask.float()  # mask: (N, R)
        b_sequences, b_attention = samples.sequences, samples.attention_mask  # (N, P+R)
        b_logprobs, b_ref_logprobs, b_values = _rollout_forward(
            policy, b_sequences, b_attention, width, config.temperature, config.minibatch_size)
        texts_prompts = [prompts[i] for i in idx]
        scored = reward(texts_prompts, samples.texts)
        raw = torch.tensor(scored.scores, dtype=torch.float32, device=device)  # (N,)
        audit_scores = audit(texts_prompts, samples.texts).reported if audit is not None else None
        t_rollout = time.perf_counter() - t0

        # ---- rewards & KL: guards, whitening, clipping, per-token KL penalty -----------------------
        spread = torch.tensor(scored.spread, device=device) if scored.spread is not None else None
        scores, guard_stats = shape_scores(raw, samples.lengths.to(device), samples.has_eos.to(device), spread, config)
        if config.whiten_rewards and config.algo != "grpo" and scores.numel() > 1:
            scores = whiten(scores)
        scores = scores.clamp(-config.reward_clip, config.reward_clip)  # (N,)
        kl_tokens = kl_per_token(b_logprobs, b_ref_logprobs, config.kl_estimator) * mask  # (N, R)
        beta = kl_ctl.value
        seq_kl = ((b_logprobs - b_ref_logprobs) * mask).sum(1)  # (N,) k1 summed: the KL we report and budget
        last = (samples.lengths.to(device) - 1).clamp(min=0)  # (N,) index of each response's final token

        # ---- advantages: gae (per-token rewards, value head) | grpo | rloo (group baselines) ----------
        if config.algo == "ppo":
            assert b_values is not None
            rewards = -beta * kl_tokens  # (N, R)
            rewards[torch.arange(len(idx), device=device), last] += scores
            b_advantages, b_returns = gae(rewards, b_values, mask, config.gamma, config.lam)
            if config.whiten_advantages:
                b_advantages = whiten(b_advantages, mask)
        elif config.algo == "rloo":  # KL in the reward, leave-one-out baseline
            seq_rewards = scores - beta * kl_tokens.sum(1)  # (N,)
            b_advantages = group_advantages(seq_rewards, config.group_size, "rloo")[:, None] * mask  # (N, R)
            b_returns = torch.zeros_like(mask)
        else:  # grpo: KL as a loss term (k3), group-normalized scores
            b_advantages = group_advantages(scores, config.group_size, "grpo")[:, None] * mask  # (N, R)
            b_returns = torch.zeros_like(mask)

        # ---- flatten: the batch is N response rows; minibatches are row subsets ---------------------
        b_values_t = b_values if b_values is not None else torch.zeros_like(mask)
        n_rows = b_sequences.shape[0]

        # ---- minibatch update: ppo_epochs passes, num_minibatches each ------------------------------
        deferred.hold()  # until the log's append below: a Ctrl-C meanwhile waits for the step's end
        clipfracs, pg_losses, v_losses, entropies, approx_kls = [], [], [], [], []
        for _epoch in range(config.ppo_epochs):
            perm = torch.randperm(n_rows, device=device)
            for start in range(0, n_rows, config.minibatch_size):
                mb = perm[start:start + config.minibatch_size]
                mb_mask = mask[mb]  # (n, R)
                mb_logp, mb_values, mb_logits = _response_forward(
                    policy, b_sequences[mb], b_attention[mb], width, config.temperature)
                pg_loss, clipfrac = clipped_policy_loss(mb_logp, b_logprobs[mb], b_advantages[mb], mb_mask,
                                                        config.clip_eps)
                loss = pg_loss
                if config.algo == "ppo":
                    assert mb_values is not None
                    v_loss = clipped_value_loss(mb_values, b_values_t[mb], b_returns[mb], mb_mask, config.clip_value)
                    loss = loss + config.vf_coef * v_loss
                    v_losses.append(float(v_loss.detach()))
                elif config.algo == "grpo":
                    loss = loss + beta * masked_mean(kl_per_token(mb_logp, b_ref_logprobs[mb], "k3"), mb_mask)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(policy.trainable_parameters(), config.max_grad_norm)
                optimizer.step()
                with torch.no_grad():
                    log_ratio = mb_logp - b_logprobs[mb]
                    approx_kls.append(float(masked_mean(torch.expm1(log_ratio) - log_ratio, mb_mask)))
                    entropies.append(float(masked_mean(entropy_from_logits(mb_logits.float()), mb_mask)))
                clipfracs.append(float(clipfrac.detach()))
                pg_losses.append(float(pg_loss.detach()))

        # ---- log, KL control, guards ------------------------------------------------------------
        kl_mean = float(seq_kl.mean())
        kl_ctl.update(kl_mean, n_rows)
        log: dict[str, float] = {
            "step": step,
            "reward": statistics.fmean(scored.reported),  # an ensemble's raw mean, not its standardized 0
            "reward_shaped": float(scores.mean()),
            "kl": kl_mean,
            "kl_coef": beta,
            "response_length": float(samples.lengths.float().mean()),
            "eos_fraction": float(samples.has_eos.float().mean()),
            "entropy": sum(entropies) / len(entropies),
            "clip_fraction": sum(clipfracs) / len(clipfracs),
            "approx_kl": sum(approx_kls) / len(approx_kls),
            "policy_loss": sum(pg_losses) / len(pg_losses),
            "value_loss": sum(v_losses) / len(v_losses) if v_losses else float("nan"),
            "time_rollout_s": t_rollout,
            "time_s": time.perf_counter() - t0,
            **guard_stats,
        }
        if audit_scores is not None:
            log["audit_reward"] = sum(audit_scores) / len(audit_scores)
        stop = kl_budget(kl_mean, kl_ctl, config)
        if audit_scores is not None and monitor.update(log["reward"], log["audit_reward"]):
            log["audit_alarm"] = 1.0
            if config.audit_stop:
                stop = stop or (f"audit stop at step {step}: the training reward rose while the audit reward fell "
                                f"over {config.audit_window}-step windows")
        result.history.append(log)
        deferred.release()
        if on_step is not None:
            on_step(log)
        if stop:
            result.stopped = stop
        if deferred.requested and step < config.steps:  # the Ctrl-C held off during the update (in the
            raise TrainingInterrupted(result)  # last step's, the run is complete: it ends as usual)
        if stop:
            break
    return result
