"""Tiny causal LMs and a tiny reward model built from configs, with tokenizers trained here in a second.

Nothing touches a model hub. The policy is a 2-layer Llama over a ~120-token BPE vocabulary; the reward
model is a 2-layer BERT with its own WordPiece vocabulary (a different tokenizer, on purpose).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)
from transformers.utils import logging as hf_logging

from node.demo_models import wordpiece_tokenizer

os.environ["HF_HUB_OFFLINE"] = "1"
hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()
torch.set_num_threads(1)

WORDS = "good bad cat dog sun rain blue red tree leaf".split()
TARGET = "good"  # the toy reward counts this word


def corpus(seed: int = 0, n: int = 400) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(n)]


def prompts(n: int = 16, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 5))) for _ in range(n)]


def count_target(_prompts: list[str], responses: list[str]) -> list[float]:
    """The learnable toy reward: how often TARGET occurs, per response word (0..1)."""
    return [r.split().count(TARGET) / max(len(r.split()), 1) for r in responses]


def save_tiny_llama(out: Path, seed: int = 0) -> Path:
    """A 2-layer Llama (hidden 32) with a word-level-ish BPE tokenizer: bos, eos, pad = eos."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(corpus(seed), trainers.BpeTrainer(vocab_size=60, special_tokens=["<unk>", "<s>", "</s>"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                        pad_token="</s>")
    tokenizer.save_pretrained(out)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=128, bos_token_id=tok.token_to_id("<s>"),
        eos_token_id=tok.token_to_id("</s>"), pad_token_id=tok.token_to_id("</s>"), tie_word_embeddings=False,
    )
    LlamaForCausalLM(config).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def policy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-policy"))


def save_tiny_rm(out: Path, seed: int = 0) -> Path:
    """A reward-model artifact (node/rm/artifact.py layout) on a tiny BERT with a WordPiece tokenizer."""
    from node.rm.artifact import save_reward_model

    tokenizer = wordpiece_tokenizer(list(corpus(seed + 7)), 80)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id,
                        num_labels=1)
    save_reward_model(BertForSequenceClassification(config), tokenizer, out,
                      {"name": "tiny rm", "base_model": "tiny-bert", "scoring": {"max_length": 64,
                                                                                "min_prompt_tokens": 8}})
    return out


@pytest.fixture(scope="session")
def rm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_rm(tmp_path_factory.mktemp("rms") / "rm")
