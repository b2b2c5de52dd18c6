"""Sampling from a policy: prompt encoding, left-padded batched generation, response masks, best-of-n.

Shared by the RL rollout (ppo.py), `rewardnode generate` and `rewardnode best-of-n`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase


def encode_prompts(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], *, chat_template: bool = True,
                   max_tokens: int = 256) -> list[list[int]]:
    """Token ids per prompt (chat template with the assistant turn opened, when the tokenizer has one),
    keeping the last `max_tokens`."""
    use_chat = chat_template and getattr(tokenizer, "chat_template", None)
    out = []
    for prompt in prompts:
        if use_chat:
            ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                                tokenize=True)
            if not isinstance(ids, list):  # transformers 5 returns a BatchEncoding
                ids = ids["input_ids"]
        else:
            ids = tokenizer(prompt)["input_ids"]
        out.append(list(ids)[-max_tokens:])
    return out


def left_pad(ids: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids (N, P) and attention mask (N, P)."""
    width = max(len(x) for x in ids)
    tokens = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, x in enumerate(ids):
        if x:
            tokens[i, width - len(x):] = torch.tensor(x, dtype=torch.long)
            mask[i, width - len(x):] = 1
    return tokens, mask


def eos_ids(model: Any, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Every token id that ends a response: the tokenizer's EOS and the generation config's."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(configured)
    return sorted(ids)


def response_mask(responses: torch.Tensor, eos: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Responses (N, R) -> mask (N, R) of the tokens up to and including the first EOS, has_eos (N,), lengths (N,)."""
    is_eos = torch.isin(responses, torch.tensor(list(eos), dtype=responses.dtype, device=responses.device))
    after_first = (is_eos.long().cumsum(1) - is_eos.long()) > 0  # (N, R) strictly after the first EOS
    mask = ~after_first
    return mask.long(), is_eos.any(1), mask.sum(1)


@dataclass(frozen=True)
class Samples:
    """One batch of sampled responses."""

    sequences: torch.Tensor  # (N, P + R) prompt (left-padded) + response
    prompt_mask: torch.Tensor  # (N, P)
    mask: torch.Tensor  # (N, R) response tokens up to and including EOS
    has_eos: torch.Tensor  # (N,)
    lengths: torch.Tensor  # (N,)
    texts: list[str]  # decoded responses, special tokens dropped

    @property
    def prompt_width(self) -> int:
        return int(self.prompt_mask.shape[1])

    @property
    def responses(self) -> torch.Tensor:
        return self.sequences[:, self.prompt_width:]

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.prompt_mask, self.mask], dim=1)


@torch.no_grad()
def sample(model: Any, tokenizer: PreTrainedTokenizerBase, prompt_ids: Sequence[Sequence[int]], *,
           max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
           device: str | torch.device = "cpu") -> Samples:
    """Sample one response per prompt id list (repeat prompts for several), stopping at EOS."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    tokens, mask = left_pad(prompt_ids, pad)
    tokens, mask = tokens.to(device), mask.to(device)
    eos = eos_ids(model, tokenizer)
    sequences = model.generate(
        input_ids=tokens, attention_mask=mask, do_sample=True, temperature=temperature, top_p=top_p,
        top_k=top_k or None, max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=pad,
    )
    responses = sequences[:, tokens.shape[1]:]  # (N, R)
    resp_mask, has_eos, lengths = response_mask(responses, eos)
    texts = [tokenizer.decode(r[: int(n)], skip_special_tokens=True)
             for r, n in zip(responses.cpu(), lengths.cpu(), strict=True)]
    return Samples(sequences, mask, resp_mask, has_eos, lengths, texts)


def sample_texts(model: Any, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], n: int, *,
                 max_new_tokens: int = 64, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                 batch_size: int = 16, chat_template: bool = True,
                 on_batch: Callable[[int], None] | None = None) -> list[list[str]]:
    """`n` sampled responses per prompt, as text; `on_batch(k)` after each batch of k responses."""
    encoded = encode_prompts(tokenizer, prompts, chat_template=chat_template)
    flat = [ids for ids in encoded for _ in range(n)]
    texts: list[str] = []
    for start in range(0, len(flat), batch_size):
        texts += sample(model, tokenizer, flat[start:start + batch_size], max_new_tokens=max_new_tokens,
                        temperature=temperature, top_p=top_p, top_k=top_k).texts
        if on_batch is not None:
            on_batch(len(flat[start:start + batch_size]))
    return [texts[i * n:(i + 1) * n] for i in range(len(prompts))]


def best_of_n(candidates: Sequence[Sequence[str]], scores: Sequence[float]) -> list[tuple[int, float]]:
    """Index and score of the best candidate per prompt, from the flat scores of all candidates.

    >>> best_of_n([["a", "b"], ["c", "d"]], [0.1, 0.9, 0.5, -1.0])
    [(1, 0.9), (0, 0.5)]
    """
    out, k = [], 0
    for group in candidates:
        group_scores = list(scores[k:k + len(group)])
        best = max(range(len(group)), key=group_scores.__getitem__)
        out.append((best, group_scores[best]))
        k += len(group)
    return out
