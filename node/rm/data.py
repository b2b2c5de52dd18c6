"""Preference pairs -> token ids -> padded batches: the reward model's input pipeline.

Text format: the model's own tokenizer on (prompt, response) as a text pair. BERT-likes get
[CLS] prompt [SEP] response [SEP] with token types 0/1; decoders (no CLS/SEP tokens) get
[bos] prompt response eos, with the two parts tokenized separately and joined at the token level.

Unlike TRL, which drops pairs longer than max_length, every pair is kept: `truncate_pair` keeps
the whole response where possible and cuts the middle of the prompt.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

PROMPT_CUT_MARKER = " ... "
_PROBE = ("hello", "world")


@dataclass(frozen=True)
class PreferencePair:
    """One human preference: `chosen` is better than `rejected` for `prompt` with probability p."""

    prompt: str
    chosen: str
    rejected: str
    p: float = 1.0
    """Soft label: probability that chosen is better (e.g. the share of annotators who said so);
    1.0 = a hard preference, 0.5 = a tie."""
    source: str = ""
    """Dataset or import source, for per-source metrics."""
    subset: str | None = None
    """Optional finer slice (e.g. "harmless-base"), for per-subset metrics."""
    margin: float = 0.0
    """Required reward gap m (Llama-2 style): the loss wants r_c - r_r > m."""
    weight: float = 1.0
    """Relative weight of the pair in the loss."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"pair label p = {self.p} is not a probability; use a value in [0, 1] (0.5 is a tie)")
        if not self.weight >= 0.0:
            raise ValueError(f"pair weight = {self.weight} is negative; use a weight >= 0")


def pairs_from_ratings(
    items: Iterable[tuple[str, str, float, str]],
    *,
    min_gap: float = 0.0,
    include_ties: bool = True,
) -> list[PreferencePair]:
    """Within-prompt pairs from (prompt, response, score in [0, 1], source) ratings or thumbs.

    Scores of the same (source, prompt, response) are averaged first (several raters). Then every two
    responses of one prompt and one source become a pair, the higher-scored one as chosen, with

        p = (1 + gap) / 2,   gap = s_chosen - s_rejected in [0, 1]

    so thumbs up vs down (1 vs 0) is a hard pair (p = 1), 5 vs 4 stars on a 1-5 scale (1.0 vs 0.75)
    gives p = 0.625, and equal scores a tie (p = 0.5; left out with include_ties=False). Pairs with
    gap < min_gap are left out. Responses are paired only within one source: scales of different
    sources are not comparable.

    >>> [(q.chosen, q.rejected, q.p) for q in pairs_from_ratings([("q", "a", 1.0, "s"), ("q", "b", 0.5, "s")])]
    [('a', 'b', 0.75)]
    """
    scores: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for prompt, response, score, source in items:
        if not 0.0 <= score <= 1.0:
            raise ValueError(
                f"rating {score} of a response to {prompt[:40]!r} is not normalized; map the rating scale "
                "onto [0, 1] first ((rating - low) / (high - low))"
            )
        scores[(source, prompt)][response].append(float(score))
    pairs = []
    for (source, prompt), by_response in scores.items():
        rated = sorted(((sum(s) / len(s), r) for r, s in by_response.items()), key=lambda x: -x[0])
        for i, (s_hi, hi) in enumerate(rated):
            for s_lo, lo in rated[i + 1:]:
                gap = s_hi - s_lo
                if gap < min_gap or (gap == 0.0 and not include_ties):
                    continue
                pairs.append(PreferencePair(prompt, hi, lo, p=(1.0 + gap) / 2.0, source=source))
    return pairs


def split_by_prompt(
    pairs: Sequence[PreferencePair], dev_fraction: float, seed: int = 0
) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """(train, dev): every pair of a prompt on one side, decided by sha256(seed, prompt) < dev_fraction.

    Deterministic across processes and machines (no Python hash()), and a prompt's side does not depend
    on the other pairs. With dev_fraction > 0 and at least two prompts, neither side is left empty.
    """
    if not 0.0 <= dev_fraction < 1.0:
        raise ValueError(f"dev_fraction = {dev_fraction} must lie in [0, 1)")
    u = {q.prompt: _unit_hash(seed, q.prompt) for q in pairs}
    dev_prompts = {prompt for prompt, x in u.items() if x < dev_fraction}
    if dev_fraction > 0 and len(u) >= 2:
        ranked = sorted(u, key=u.__getitem__)
        if not dev_prompts:
            dev_prompts = {ranked[0]}
        elif len(dev_prompts) == len(u):
            dev_prompts.discard(ranked[-1])
    train = [q for q in pairs if q.prompt not in dev_prompts]
    dev = [q for q in pairs if q.prompt in dev_prompts]
    return train, dev


def _unit_hash(seed: int, text: str) -> float:
    digest = hashlib.sha256(f"{seed}\x00{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def pairs_fingerprint(pairs: Sequence[PreferencePair]) -> str:
    """sha256 over every field of every pair, in order: identifies a training set."""
    h = hashlib.sha256()
    for q in pairs:
        for part in (q.prompt, q.chosen, q.rejected, repr(q.p), q.source, repr(q.subset), repr(q.margin),
                     repr(q.weight)):
            h.update(part.encode())
            h.update(b"\x00")
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# Truncation and encoding


def truncate_pair(
    prompt_ids: list[int],
    response_ids: list[int],
    *,
    budget: int,
    min_prompt_tokens: int,
    marker_ids: list[int],
    head_fraction: float = 0.25,
) -> tuple[list[int], list[int], bool]:
    """Fit prompt + response into `budget` tokens; returns (prompt, response, truncated).

    1. The response keeps min(len, budget - min(len(prompt), min_prompt_tokens)) tokens from its start.
    2. A prompt longer than what is left keeps head_fraction of it from its start (the question or
       instructions) and the rest from its end (the last turn), with `marker_ids` between them.

    >>> truncate_pair(list(range(10)), [90, 91], budget=8, min_prompt_tokens=4, marker_ids=[-1], head_fraction=0.5)
    ([0, 1, -1, 7, 8, 9], [90, 91], True)
    """
    if len(prompt_ids) + len(response_ids) <= budget:
        return prompt_ids, response_ids, False
    response_cap = max(budget - min(len(prompt_ids), min_prompt_tokens), 0)
    response_ids = response_ids[:response_cap]
    prompt_budget = budget - len(response_ids)
    if len(prompt_ids) > prompt_budget:
        keep = prompt_budget - len(marker_ids)
        if keep <= 0:  # no room for a marker: the end of the prompt (its last turn) matters most
            prompt_ids = prompt_ids[len(prompt_ids) - prompt_budget:] if prompt_budget > 0 else []
        else:
            head = int(keep * head_fraction)
            prompt_ids = prompt_ids[:head] + marker_ids + prompt_ids[len(prompt_ids) - (keep - head):]
    return prompt_ids, response_ids, True


@dataclass(frozen=True)
class PairTemplate:
    """Special tokens around (prompt, response): prefix + prompt + middle + response + suffix."""

    prefix: list[int]
    middle: list[int]
    suffix: list[int]
    with_token_types: bool
    """True when the model takes token_type_ids: 0 up to and including `middle`, 1 after it."""

    @property
    def n_special(self) -> int:
        return len(self.prefix) + len(self.middle) + len(self.suffix)

    @classmethod
    def for_tokenizer(cls, tokenizer: PreTrainedTokenizerBase) -> PairTemplate:
        """Read the text-pair template off the tokenizer by encoding a probe pair."""
        with_types = "token_type_ids" in tokenizer.model_input_names
        a, b = (tokenizer(t, add_special_tokens=False)["input_ids"] for t in _PROBE)
        if tokenizer.cls_token is None or tokenizer.sep_token is None:  # decoder: [bos] prompt response eos
            single = tokenizer(_PROBE[0])["input_ids"]
            prefix = single[: _find(single, a)] if _find(single, a) >= 0 else []
            if tokenizer.eos_token_id is None:
                raise ValueError("the tokenizer has no eos token to end a sequence with; set eos_token in its config")
            return cls(prefix, [], [tokenizer.eos_token_id], with_types)
        full = tokenizer(*_PROBE)["input_ids"]
        i = _find(full, a)
        j = _find(full, b, start=i + len(a))
        if i < 0 or j < 0:
            raise ValueError(
                f"cannot read the text-pair template of {type(tokenizer).__name__}: encoding {_PROBE} as a pair "
                "does not contain the two texts' own tokens; use a tokenizer with a standard pair template"
            )
        return cls(full[:i], full[i + len(a): j], full[j + len(b):], with_types)


def _find(seq: list[int], sub: list[int], start: int = 0) -> int:
    for i in range(start, len(seq) - len(sub) + 1):
        if seq[i: i + len(sub)] == sub:
            return i
    return -1


class PairEncoder:
    """Encodes (prompt, response) texts for the reward model with the truncation used in training."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        max_length: int,
        min_prompt_tokens: int = 64,
        head_fraction: float = 0.25,
    ) -> None:
        self.tokenizer = tokenizer
        self.template = PairTemplate.for_tokenizer(tokenizer)
        self.max_length = max_length
        self.budget = max_length - self.template.n_special
        if self.budget < 2:
            raise ValueError(
                f"max_length = {max_length} leaves {self.budget} tokens after {self.template.n_special} special "
                "tokens; raise max_length"
            )
        self.min_prompt_tokens = min(min_prompt_tokens, self.budget - 1)
        self.head_fraction = head_fraction
        self.marker_ids = tokenizer(PROMPT_CUT_MARKER, add_special_tokens=False)["input_ids"]

    @property
    def pad_token_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        if pad is None:
            raise ValueError("the tokenizer has no pad token; load it with node.rm.model.load_backbone")
        return int(pad)

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, without special tokens (unique texts are tokenized once)."""
        unique = list(dict.fromkeys(texts))
        ids = self.tokenizer(unique, add_special_tokens=False)["input_ids"] if unique else []
        by_text = dict(zip(unique, ids, strict=True))
        return [by_text[t] for t in texts]

    def build(self, prompt_ids: list[int], response_ids: list[int]) -> tuple[list[int], list[int] | None, bool]:
        """(input_ids, token_type_ids or None, truncated) of one truncated, templated sequence."""
        p, r, truncated = truncate_pair(
            prompt_ids, response_ids, budget=self.budget, min_prompt_tokens=self.min_prompt_tokens,
            marker_ids=self.marker_ids, head_fraction=self.head_fraction,
        )
        t = self.template
        ids = t.prefix + p + t.middle + r + t.suffix
        types = None
        if t.with_token_types:
            n0 = len(t.prefix) + len(p) + len(t.middle)
            types = [0] * n0 + [1] * (len(ids) - n0)
        return ids, types, truncated

    def encode(
        self, prompts: Sequence[str], responses: Sequence[str]
    ) -> tuple[list[list[int]], list[list[int]] | None, list[bool]]:
        """(input_ids, token_type_ids or None, truncated) for each (prompt, response)."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses; pass one prompt per response")
        built = [self.build(p, r) for p, r in zip(self.tokenize(prompts), self.tokenize(responses), strict=True)]
        types = [b[1] or [] for b in built] if self.template.with_token_types else None
        return [b[0] for b in built], types, [b[2] for b in built]


@dataclass(frozen=True)
class TokenizedPairs:
    """Encoded pairs, ready for `PairCollator`; `truncated[i]`: either side of pair i was cut."""

    chosen: list[list[int]]
    rejected: list[list[int]]
    chosen_types: list[list[int]] | None
    rejected_types: list[list[int]] | None
    p: list[float]
    margin: list[float]
    weight: list[float]
    truncated: list[bool]

    def __len__(self) -> int:
        return len(self.chosen)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item: dict[str, Any] = {
            "chosen_input_ids": self.chosen[i], "rejected_input_ids": self.rejected[i],
            "p": self.p[i], "margin": self.margin[i], "weight": self.weight[i],
        }
        if self.chosen_types is not None and self.rejected_types is not None:
            item["chosen_token_type_ids"] = self.chosen_types[i]
            item["rejected_token_type_ids"] = self.rejected_types[i]
        return item

    @property
    def n_truncated(self) -> int:
        return sum(self.truncated)

    @property
    def lengths(self) -> list[int]:
        """Padded length of each pair in a batch: the longer of its two sequences."""
        return [max(len(c), len(r)) for c, r in zip(self.chosen, self.rejected, strict=True)]


def tokenize_pairs(pairs: Sequence[PreferencePair], encoder: PairEncoder) -> TokenizedPairs:
    """Encode every pair; the prompt is tokenized once for both sides."""
    prompt_ids = encoder.tokenize([q.prompt for q in pairs])
    chosen_ids = encoder.tokenize([q.chosen for q in pairs])
    rejected_ids = encoder.tokenize([q.rejected for q in pairs])
    c = [encoder.build(p, r) for p, r in zip(prompt_ids, chosen_ids, strict=True)]
    r = [encoder.build(p, r) for p, r in zip(prompt_ids, rejected_ids, strict=True)]
    typed = encoder.template.with_token_types
    return TokenizedPairs(
        chosen=[x[0] for x in c],
        rejected=[x[0] for x in r],
        chosen_types=[x[1] or [] for x in c] if typed else None,
        rejected_types=[x[1] or [] for x in r] if typed else None,
        p=[q.p for q in pairs],
        margin=[q.margin for q in pairs],
        weight=[q.weight for q in pairs],
        truncated=[a[2] or b[2] for a, b in zip(c, r, strict=True)],
    )


# ----------------------------------------------------------------------------------------------
# Batching


def pad_batch(
    sequences: Sequence[list[int]],
    token_types: Sequence[list[int]] | None,
    pad_token_id: int,
    pad_to_multiple_of: int = 0,
) -> dict[str, torch.Tensor]:
    """Right-pad to the longest sequence (rounded up to pad_to_multiple_of): (N, T) tensors.

    >>> pad_batch([[5, 6, 7], [8]], None, pad_token_id=0)["input_ids"]
    tensor([[5, 6, 7],
            [8, 0, 0]])
    """
    t = max(len(s) for s in sequences)
    if pad_to_multiple_of > 1:
        t = math.ceil(t / pad_to_multiple_of) * pad_to_multiple_of
    n = len(sequences)
    input_ids = torch.full((n, t), pad_token_id, dtype=torch.long)  # (N, T)
    attention_mask = torch.zeros((n, t), dtype=torch.long)  # (N, T)
    for i, s in enumerate(sequences):
        input_ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        attention_mask[i, : len(s)] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    if token_types is not None:
        token_type_ids = torch.zeros((n, t), dtype=torch.long)  # (N, T) padding gets type 0
        for i, s in enumerate(token_types):
            token_type_ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        batch["token_type_ids"] = token_type_ids
    return batch


@dataclass(frozen=True)
class PairCollator:
    """B pairs -> one batch of 2B rows: chosen in rows [0, B), rejected in rows [B, 2B).

    One forward pass scores both sides; padding goes to the longest of the 2B sequences only.

    >>> b = PairCollator(pad_token_id=0)([{"chosen_input_ids": [1, 2, 3], "rejected_input_ids": [1, 4],
    ...                                    "p": 1.0, "margin": 0.0, "weight": 1.0}])
    >>> b["input_ids"], b["attention_mask"], b["p"]
    (tensor([[1, 2, 3],
            [1, 4, 0]]), tensor([[1, 1, 1],
            [1, 1, 0]]), tensor([1.]))
    """

    pad_token_id: int
    pad_to_multiple_of: int = 0

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("cannot collate an empty batch")
        sequences = [f["chosen_input_ids"] for f in features] + [f["rejected_input_ids"] for f in features]
        types = None
        if "chosen_token_type_ids" in features[0]:
            types = [f["chosen_token_type_ids"] for f in features] + [f["rejected_token_type_ids"] for f in features]
        batch = pad_batch(sequences, types, self.pad_token_id, self.pad_to_multiple_of)  # (2B, T)
        for key in ("p", "margin", "weight"):
            batch[key] = torch.tensor([float(f[key]) for f in features], dtype=torch.float32)  # (B,)
        return batch


class LengthGroupedBatchSampler:
    """Batches of indices with similar lengths, in a seeded random order that changes every epoch.

    Per epoch e: a permutation drawn from seed and e, cut into mega-batches of batch_size *
    mega_batch_mult, each sorted longest first and cut into batches; the batches are shuffled and
    the longest one moved to the front (out-of-memory shows at step 1, not hours in). With
    group_by_length=False it is a plain seeded shuffle.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        *,
        seed: int = 0,
        mega_batch_mult: int = 50,
        group_by_length: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size = {batch_size} must be >= 1")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.mega_batch_mult = mega_batch_mult
        self.group_by_length = group_by_length
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def batches(self) -> list[list[int]]:
        """This epoch's batches, in order."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        perm = torch.randperm(len(self.lengths), generator=g).tolist()
        if not self.group_by_length:
            return [perm[i: i + self.batch_size] for i in range(0, len(perm), self.batch_size)]
        mega = self.batch_size * self.mega_batch_mult
        batches = []
        for start in range(0, len(perm), mega):
            chunk = sorted(perm[start: start + mega], key=lambda i: -self.lengths[i])
            batches += [chunk[i: i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        order = torch.randperm(len(batches), generator=g).tolist()
        batches = [batches[i] for i in order]
        longest = max(range(len(batches)), key=lambda b: self.lengths[batches[b][0]], default=0)
        if batches:
            batches[0], batches[longest] = batches[longest], batches[0]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state["seed"] != self.seed:
            raise ValueError(f"sampler state has seed {state['seed']}, this sampler {self.seed}; resume with the same seed")
        self.epoch = state["epoch"]
