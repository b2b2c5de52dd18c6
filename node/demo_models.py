"""Tiny models for `python -m node.demo --quick`, built from configs in seconds, nothing downloaded.

- a 2-layer BERT reward-model backbone (saved headless, like all-MiniLM-L6-v2) with a WordPiece
  tokenizer built from the demo's own texts (the same vocabulary on every run);
- a 2-layer Llama policy with a byte-level BPE tokenizer trained here, and a one-line chat template.

They learn little; they let the quick demo (and its test) run every step of the real pipeline.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    BertConfig,
    BertModel,
    BertTokenizerFast,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant:{% endif %}")


def wordpiece_vocab(tok: Tokenizer, texts: Sequence[str], vocab_size: int, special: Sequence[str]) -> dict[str, int]:
    """A WordPiece vocabulary that is the same on every run: the special tokens, every character (word-initial and
    "##" continuation, so any word splits into known pieces), then the most frequent whole words (ties in string
    order) up to vocab_size. tokenizers' WordPieceTrainer numbers equally frequent characters in hash order and
    breaks ties between equally frequent merges by those numbers, so the same texts gave different vocabularies,
    and differently trained demo models, from one run to the next."""
    assert tok.normalizer is not None and tok.pre_tokenizer is not None
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(word for word, _ in tok.pre_tokenizer.pre_tokenize_str(tok.normalizer.normalize_str(text)))
    chars = sorted({c for word in counts for c in word})
    pieces = [*special, *chars, *(f"##{c}" for c in chars)]
    known = set(pieces)
    words = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if w not in known]
    return {t: i for i, t in enumerate(pieces + words[:max(0, vocab_size - len(pieces))])}


def wordpiece_tokenizer(texts: Sequence[str], vocab_size: int, *,
                        model_max_length: int | None = None) -> BertTokenizerFast:
    """A BERT tokenizer (lower-casing, [CLS] A [SEP] B [SEP] with token types) on `wordpiece_vocab(texts)`."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.model = models.WordPiece(vocab=wordpiece_vocab(tok, texts, vocab_size, special), unk_token="[UNK]")
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    tok.decoder = decoders.WordPiece()
    extra = {} if model_max_length is None else {"model_max_length": model_max_length}
    return BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                             sep_token="[SEP]", mask_token="[MASK]", **extra)


def build_tiny_backbone(out: Path, texts: Sequence[str], *, vocab_size: int = 2000, seed: int = 0) -> Path:
    """A 2-layer BERT (hidden 32) + a WordPiece tokenizer built from `texts` (`wordpiece_vocab`), saved to `out`."""
    tokenizer = wordpiece_tokenizer(texts, vocab_size, model_max_length=512)
    tokenizer.save_pretrained(out)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id)
    BertModel(config).save_pretrained(out)
    return out


def build_tiny_policy(out: Path, texts: Sequence[str], *, vocab_size: int = 600, seed: int = 0) -> Path:
    """A 2-layer Llama (hidden 32) with a byte-level BPE tokenizer trained on `texts`, saved to `out`."""
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "</s>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="</s>",
                                        model_max_length=1024)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(out)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=1024, bos_token_id=tok.token_to_id("<s>"),
        eos_token_id=tok.token_to_id("</s>"), pad_token_id=tok.token_to_id("</s>"), tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(out)
    return out
