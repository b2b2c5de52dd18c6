"""Truncation, encoding, collation, batching and the dev split of preference pairs."""

from __future__ import annotations

import random

import pytest
import torch
from torch.testing import assert_close
from transformers import AutoTokenizer

from node.rm.data import (
    LengthGroupedBatchSampler,
    PairCollator,
    PairEncoder,
    PreferencePair,
    pairs_from_ratings,
    split_by_prompt,
    tokenize_pairs,
    truncate_pair,
)
from node.rm.model import load_backbone

MARKER = [-1, -2]


def test_truncate_pair_keeps_response_and_both_prompt_ends() -> None:
    rng = random.Random(0)
    for _ in range(2000):
        budget, min_prompt = rng.randint(6, 60), rng.randint(0, 20)
        prompt = list(range(rng.randint(0, 80)))
        response = list(range(1000, 1000 + rng.randint(0, 80)))
        p, r, truncated = truncate_pair(prompt, response, budget=budget, min_prompt_tokens=min_prompt,
                                        marker_ids=MARKER, head_fraction=0.25)
        assert len(p) + len(r) <= budget
        assert truncated == (len(prompt) + len(response) > budget)
        assert r == response[: len(r)]  # the response keeps its start
        if len(response) <= budget - min(len(prompt), min_prompt):
            assert r == response  # whole response whenever the prompt minimum allows it
        if not truncated:
            assert p == prompt
        elif p != prompt and len(p) > len(MARKER):  # cut in the middle: start + marker + end
            i = p.index(MARKER[0])
            assert p[:i] == prompt[:i] and p[i: i + 2] == MARKER
            tail = p[i + 2:]
            assert tail == prompt[len(prompt) - len(tail):] and len(tail) >= i
        if truncated and len(prompt) + len(r) > budget:
            assert len(p) + len(r) == budget  # a cut prompt uses the whole budget


def test_encoder_matches_the_tokenizers_text_pair(bert_dir) -> None:
    tokenizer = AutoTokenizer.from_pretrained(bert_dir, local_files_only=True)
    encoder = PairEncoder(tokenizer, max_length=64)
    ids, types, truncated = encoder.encode(["what is w1 ?"], ["w2 excellent w3 ."])
    expected = tokenizer("what is w1 ?", "w2 excellent w3 .")
    assert ids[0] == expected["input_ids"] and types[0] == expected["token_type_ids"]
    assert truncated == [False]
    assert encoder.template.prefix == [tokenizer.cls_token_id]
    assert encoder.template.middle == encoder.template.suffix == [tokenizer.sep_token_id]


def test_encoder_truncates_long_prompts_in_the_middle(bert_dir) -> None:
    tokenizer = AutoTokenizer.from_pretrained(bert_dir, local_files_only=True)
    encoder = PairEncoder(tokenizer, max_length=32, min_prompt_tokens=8, head_fraction=0.25)
    prompt = "how " + " ".join(f"w{i % 40}" for i in range(60)) + " why ?"
    response = "w1 excellent w2 w3 ."
    ids, types, truncated = encoder.encode([prompt], [response])
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    r_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    keep = 32 - 3 - len(r_ids) - len(encoder.marker_ids)
    head = keep // 4
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    assert ids[0] == [cls] + p_ids[:head] + encoder.marker_ids + p_ids[-(keep - head):] + [sep] + r_ids + [sep]
    assert len(ids[0]) == 32 and truncated == [True]
    assert types[0] == [0] * (len(ids[0]) - len(r_ids) - 1) + [1] * (len(r_ids) + 1)


def test_decoder_format_is_bos_prompt_response_eos(llama_dir) -> None:
    _, tokenizer = load_backbone(str(llama_dir))
    encoder = PairEncoder(tokenizer, max_length=64)
    ids, types, _ = encoder.encode(["what is w1 ?"], ["w2 ."])
    p = tokenizer("what is w1 ?", add_special_tokens=False)["input_ids"]
    r = tokenizer("w2 .", add_special_tokens=False)["input_ids"]
    assert ids[0] == [tokenizer.bos_token_id] + p + r + [tokenizer.eos_token_id]
    assert types is None


def test_tokenize_pairs_counts_truncated_pairs(bert_dir) -> None:
    tokenizer = AutoTokenizer.from_pretrained(bert_dir, local_files_only=True)
    encoder = PairEncoder(tokenizer, max_length=24, min_prompt_tokens=4)
    long = " ".join(["w5"] * 40)
    pairs = [PreferencePair("short", "w1", "w2"), PreferencePair(long, "w1", "w2"),
             PreferencePair("short", "w1", long), PreferencePair("short", "w1", "w3")]
    data = tokenize_pairs(pairs, encoder)
    assert data.truncated == [False, True, True, False] and data.n_truncated == 2
    assert max(data.lengths) == 24


def test_collator_exact_tensors() -> None:
    features = [
        {"chosen_input_ids": [2, 10, 3, 11, 3], "rejected_input_ids": [2, 10, 3, 12, 13, 14, 3],
         "chosen_token_type_ids": [0, 0, 0, 1, 1], "rejected_token_type_ids": [0, 0, 0, 1, 1, 1, 1],
         "p": 1.0, "margin": 0.5, "weight": 2.0},
        {"chosen_input_ids": [2, 20, 3, 21, 3], "rejected_input_ids": [2, 20, 3, 22, 3],
         "chosen_token_type_ids": [0, 0, 0, 1, 1], "rejected_token_type_ids": [0, 0, 0, 1, 1],
         "p": 0.5, "margin": 0.0, "weight": 1.0},
    ]
    batch = PairCollator(pad_token_id=0)(features)
    assert_close(batch["input_ids"], torch.tensor([
        [2, 10, 3, 11, 3, 0, 0],
        [2, 20, 3, 21, 3, 0, 0],
        [2, 10, 3, 12, 13, 14, 3],
        [2, 20, 3, 22, 3, 0, 0],
    ]))
    assert_close(batch["attention_mask"], torch.tensor([
        [1, 1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1, 0, 0],
    ]))
    assert_close(batch["token_type_ids"], torch.tensor([
        [0, 0, 0, 1, 1, 0, 0],
        [0, 0, 0, 1, 1, 0, 0],
        [0, 0, 0, 1, 1, 1, 1],
        [0, 0, 0, 1, 1, 0, 0],
    ]))
    assert_close(batch["p"], torch.tensor([1.0, 0.5]))
    assert_close(batch["margin"], torch.tensor([0.5, 0.0]))
    assert_close(batch["weight"], torch.tensor([2.0, 1.0]))
    rounded = PairCollator(pad_token_id=0, pad_to_multiple_of=8)(features)
    assert rounded["input_ids"].shape == (4, 8)


def test_length_grouped_sampler() -> None:
    rng = random.Random(0)
    lengths = [rng.randint(1, 500) for _ in range(1000)]
    sampler = LengthGroupedBatchSampler(lengths, 16, seed=3, mega_batch_mult=8)
    batches = sampler.batches()
    assert sorted(i for b in batches for i in b) == list(range(1000)) and len(batches) == len(sampler) == 63
    assert max(lengths[i] for i in batches[0]) == max(lengths)  # longest batch first
    assert batches == LengthGroupedBatchSampler(lengths, 16, seed=3, mega_batch_mult=8).batches()
    sampler.set_epoch(1)
    assert sampler.batches() != batches

    def padding(bs: list[list[int]]) -> int:
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in bs)

    plain = LengthGroupedBatchSampler(lengths, 16, seed=3, group_by_length=False).batches()
    assert padding(batches) < padding(plain) / 5


def test_split_by_prompt_keeps_prompts_together_and_is_stable() -> None:
    pairs = [PreferencePair(f"prompt {i % 50}", f"a{i}", f"b{i}") for i in range(500)]
    train, dev = split_by_prompt(pairs, 0.2, seed=1)
    assert len(train) + len(dev) == 500
    assert not {q.prompt for q in train} & {q.prompt for q in dev}
    assert 3 <= len({q.prompt for q in dev}) <= 20
    train2, dev2 = split_by_prompt(list(reversed(pairs[:250])), 0.2, seed=1)  # order and company don't matter
    assert {q.prompt for q in dev2} <= {q.prompt for q in dev}
    assert {q.prompt for q in train2} <= {q.prompt for q in train}
    assert split_by_prompt(pairs, 0.2, seed=2)[1] != dev
    tiny_train, tiny_dev = split_by_prompt(pairs[:2], 0.01)
    assert len(tiny_train) == len(tiny_dev) == 1


def test_pairs_from_ratings() -> None:
    items = [
        ("q", "good", 1.0, "stars"), ("q", "good", 0.5, "stars"),  # two raters: mean 0.75
        ("q", "bad", 0.25, "stars"), ("q", "meh", 0.25, "stars"),
        ("q", "up", 1.0, "thumbs"), ("q", "down", 0.0, "thumbs"),
        ("other", "x", 1.0, "stars"),
    ]
    pairs = pairs_from_ratings(items)
    got = {(q.source, q.chosen, q.rejected): q.p for q in pairs}
    assert got == {("stars", "good", "bad"): 0.75, ("stars", "good", "meh"): 0.75, ("stars", "bad", "meh"): 0.5,
                   ("thumbs", "up", "down"): 1.0}
    assert len(pairs_from_ratings(items, include_ties=False)) == 3
    assert len(pairs_from_ratings(items, min_gap=0.6)) == 1
    with pytest.raises(ValueError, match="normalized"):
        pairs_from_ratings([("q", "r", 5.0, "stars")])


def test_preference_pair_rejects_bad_labels() -> None:
    with pytest.raises(ValueError, match="probability"):
        PreferencePair("q", "a", "b", p=1.5)
    with pytest.raises(ValueError, match="weight"):
        PreferencePair("q", "a", "b", weight=-1.0)
