"""Supervised fine-tuning on stored demonstrations (prompt -> response), LoRA by default.

Loss: mean token cross-entropy on the response tokens only (prompt tokens are masked with -100).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from node.rl.generate import encode_prompts
from node.rl.policy import PolicyWithValue


@dataclass(frozen=True)
class SFTConfig:
    """Settings of `rewardnode sft`."""

    epochs: int = 1
    """Passes over the demonstrations."""
    batch_size: int = 4
    """Demonstrations per gradient step."""
    learning_rate: float = 2e-4
    """AdamW learning rate."""
    max_tokens: int = 512
    """Prompt + response are cut to this many tokens (the prompt's head is dropped first)."""
    seed: int = 0
    """Shuffling seed."""


def encode_demonstration(tokenizer: PreTrainedTokenizerBase, prompt: str, response: str, max_tokens: int,
                         chat_template: bool = True) -> tuple[list[int], list[int]]:
    """(input ids, labels): labels are -100 on the prompt, the response ids + EOS on the rest."""
    prompt_ids = encode_prompts(tokenizer, [prompt], chat_template=chat_template, max_tokens=max_tokens)[0]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    response_ids = response_ids[:max_tokens - 1]
    prompt_ids = prompt_ids[-(max_tokens - len(response_ids)):]
    return prompt_ids + response_ids, [-100] * len(prompt_ids) + response_ids


def train_sft(policy: PolicyWithValue, tokenizer: PreTrainedTokenizerBase, pairs: Sequence[tuple[str, str]],
              config: SFTConfig, on_step: Callable[[dict[str, float]], None] | None = None) -> list[float]:
    """Fine-tune on (prompt, response) pairs; returns the loss of each step."""
    if not pairs:
        raise ValueError("no demonstrations to train on; import some with `rewardnode import FILE --format "
                         "demonstrations`")
    encoded = [encode_demonstration(tokenizer, p, r, config.max_tokens) for p, r in pairs]
    rng = random.Random(config.seed)
    params = policy.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    policy.train()
    losses = []
    for _epoch in range(config.epochs):
        order = list(range(len(encoded)))
        rng.shuffle(order)
        for start in range(0, len(order), config.batch_size):
            batch = [encoded[i] for i in order[start:start + config.batch_size]]
            width = max(len(ids) for ids, _ in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)  # (b, T) right-padded
            labels = torch.full((len(batch), width), -100, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for i, (x, y) in enumerate(batch):
                ids[i, :len(x)], labels[i, :len(y)], mask[i, :len(x)] = torch.tensor(x), torch.tensor(y), 1
            logits, _ = policy(ids, mask)  # (b, T, V)
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                                     labels[:, 1:].reshape(-1), ignore_index=-100)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            losses.append(float(loss.detach()))
            if on_step is not None:
                on_step({"step": len(losses), "loss": losses[-1]})
    policy.eval()
    return losses
