"""Tiny reward-model backbones built from configs, with tokenizers trained here in a second.

Nothing touches a model hub: a WordPiece tokenizer (saved as a BertTokenizerFast) and a BPE
tokenizer are trained on generated text, and 2-layer BERT / Llama models are saved next to them.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    BertConfig,
    BertModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)
from transformers.utils import logging as hf_logging

from node.demo_models import wordpiece_tokenizer
from node.rm.config import TrainConfig
from node.rm.data import PreferencePair

os.environ["HF_HUB_OFFLINE"] = "1"
hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()
torch.set_num_threads(1)  # 2 shared cores: one thread per test process keeps runs deterministic and polite

WORDS = [f"w{i}" for i in range(40)] + (
    "the a is of to and what how why please help me tell about answer question human assistant".split()
)
MARKER = "excellent"  # chosen responses contain it, rejected ones never do
DISTRACTOR = "wonderful"  # as long as MARKER: rejected responses contain it instead
PUNCT = [".", ",", "?", "!", "..."]


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)) + rng.choice(PUNCT[:3])


def _corpus(rng: random.Random) -> list[str]:
    return [_sentence(rng, rng.randint(4, 16)) + f" {MARKER} ... {DISTRACTOR} " + _sentence(rng, 5) for _ in range(600)]


def synthetic_pairs(n: int, seed: int = 0, *, source: str = "synthetic") -> list[PreferencePair]:
    """A learnable preference: the chosen response contains MARKER, the rejected one DISTRACTOR.

    Both responses have the same length distribution: length says nothing about the label.
    """
    rng = random.Random(seed)
    pairs = []
    for i in range(n):
        prompt = f"q{i} " + _sentence(rng, rng.randint(3, 12))
        responses = []
        for special in (MARKER, DISTRACTOR):
            words = [rng.choice(WORDS) for _ in range(rng.randint(2, 8))]
            words.insert(rng.randint(0, len(words)), special)
            responses.append(" ".join(words))
        pairs.append(PreferencePair(prompt, *responses, source=source))
    return pairs


@pytest.fixture(scope="session")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer BERT (hidden 32) saved as BertModel (no head, like all-MiniLM-L6-v2) + WordPiece tokenizer."""
    out = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = wordpiece_tokenizer(list(_corpus(random.Random(0))), 300)
    tokenizer.save_pretrained(out)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id,
    )
    BertModel(config).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Llama (hidden 32) with a BPE tokenizer that has bos/eos but no pad token."""
    out = tmp_path_factory.mktemp("tiny-llama")
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(_corpus(random.Random(1)), trainers.BpeTrainer(vocab_size=300,
                                                                           special_tokens=["<unk>", "<s>", "</s>"]))
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    tokenizer.save_pretrained(out)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=128, bos_token_id=bos, eos_token_id=tok.token_to_id("</s>"),
    )
    LlamaForCausalLM(config).save_pretrained(out)
    return out


@pytest.fixture
def tiny_config(bert_dir: Path) -> TrainConfig:
    """Settings that train the tiny BERT in well under a second per epoch."""
    return TrainConfig(
        base_model=str(bert_dir), max_length=48, min_prompt_tokens=8, batch_size=8, eval_batch_size=32,
        learning_rate=3e-3, warmup_ratio=0.0, num_threads=1, device="cpu", log_every=5,
    )
