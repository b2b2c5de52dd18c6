"""The reward-model artifact: a standard Hugging Face folder plus a model card, and a scorer for it.

    out_dir/
      config.json, model.safetensors      AutoModelForSequenceClassification.from_pretrained(out_dir) loads it
      tokenizer.json, tokenizer_config.json, ...
      model_card.json                     the card: data snapshot, sources, counts, config, metrics, sha256
      README.md                           the same card for people

LoRA adapters are merged into the base weights before saving, so no PEFT is needed to load it.
The artifact's identity is sha256(model.safetensors): the exact bytes of the weights file.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    PretrainedConfig,
    PreTrainedTokenizerBase,
)

from node.errors import UsageError
from node.rm.data import PairEncoder, pad_batch
from node.rm.evaluate import forward_context
from node.rm.model import load_tokenizer as load_any_tokenizer
from node.rm.model import rewards, unwrap
from node.rm.preflight import position_limit

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "model_card.json"
README_FILE = "README.md"
ARTIFACT_FORMAT = "rewardnode-rm/1"
# The card's "scoring" block: how texts were encoded in training; RewardScorer reuses it.
SCORING_KEYS = ("max_length", "min_prompt_tokens", "prompt_head_fraction")


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_reward_model(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, out_dir: str | os.PathLike[str], card: dict[str, Any]
) -> str:
    """Write the artifact folder; returns the sha256 of its model.safetensors.

    `card` is free-form JSON (snapshot hash, sources, counts, base model, config, metrics); put the
    training truncation under card["scoring"] (keys max_length, min_prompt_tokens,
    prompt_head_fraction), or the TrainConfig dict under card["config"], so RewardScorer encodes
    texts as training did. The folder is written
    next to out_dir and renamed into place, so a crash never leaves half an artifact.
    """
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} already exists and is not an empty folder; save to a new folder or delete it")
    try:
        json.dumps(card, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"the model card is not plain JSON ({e}); pass str/int/float/bool/list/dict values") from e

    merged = unwrap(model)
    if hasattr(model, "merge_and_unload"):  # PEFT: merge a copy, leave the caller's model trainable
        merged = copy.deepcopy(model).merge_and_unload()  # type: ignore[operator]
    with staged_folder(out) as tmp:
        merged.save_pretrained(tmp, max_shard_size="10000GB")  # always one model.safetensors
        tokenizer.save_pretrained(tmp)
        if not (tmp / WEIGHTS_FILE).is_file():
            raise ValueError(f"{type(merged).__name__}.save_pretrained wrote no {WEIGHTS_FILE}; save a transformers model")
        sha = file_sha256(tmp / WEIGHTS_FILE)
        full_card = {"format": ARTIFACT_FORMAT, **card, "sha256": sha, "weights_file": WEIGHTS_FILE}
        config = card.get("config")
        if "scoring" not in card and isinstance(config, dict):  # derive it from the training config
            full_card["scoring"] = {k: config[k] for k in SCORING_KEYS if k in config}
        (tmp / CARD_FILE).write_text(json.dumps(full_card, indent=2, sort_keys=True) + "\n")
        (tmp / README_FILE).write_text(render_readme(full_card))
    return sha


@contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """A new private folder next to `out` to write into: renamed to `out` (which must be new or empty) when
    the block ends, removed if it raises, so a crash never leaves half a folder at `out`; the parent
    folders it had to make for `out` are removed with it."""
    made = [p for p in [out.parent, *out.parent.parents] if not p.exists()]  # deepest first
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            yield tmp
            if out.exists():
                out.rmdir()
            os.replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    except BaseException:
        for parent in made:
            try:
                parent.rmdir()  # only if still empty: never what someone else put there meanwhile
            except OSError:
                break
        raise


def export_hf_folder(folder: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> None:
    """Copy an artifact folder to a new (or empty) out_dir for others to use, as the ONNX export writes
    its own: hidden files left out, folders 0755 and files 0644 whatever the artifact's modes
    (safetensors writes 0600), copied next to out_dir and renamed into place."""
    out = Path(out_dir)
    with staged_folder(out) as tmp:
        shutil.copytree(folder, tmp, ignore=shutil.ignore_patterns(".*"), dirs_exist_ok=True)
        for path in [tmp, *tmp.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)


def render_readme(card: dict[str, Any]) -> str:
    """The model card as Markdown."""
    base = card.get("base_model", "unknown")
    lines = [
        f"# {card.get('name', 'Reward model')}",
        "",
        "A reward model trained by rewardnode on an organization's private human preference pairs:",
        f"r(prompt, response) is a scalar; higher means preferred. Base model: `{base}`.",
        "",
        "| field | value |",
        "| --- | --- |",
        f"| weights sha256 | `{card.get('sha256')}` ({card.get('weights_file', WEIGHTS_FILE)}) |",
    ]
    for key in ("snapshot", "created", "base_model", "counts", "sources"):
        if key in card:
            lines.append(f"| {key} | `{json.dumps(card[key], sort_keys=True)}` |")
    for key in ("metrics", "config", "scoring"):
        if key in card:
            lines += ["", f"## {key.capitalize()}", "", "```json", json.dumps(card[key], indent=2, sort_keys=True), "```"]
    lines += [
        "", "## Loading", "", "```python",
        "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
        "model = AutoModelForSequenceClassification.from_pretrained(path)",
        "tokenizer = AutoTokenizer.from_pretrained(path)",
        "# or, with the truncation used in training:",
        "from node.rm.artifact import RewardScorer",
        "RewardScorer(path).score([prompt], [response])",
        "```", "",
    ]
    return "\n".join(lines)


def read_card(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The artifact's model_card.json ({} when the folder has none)."""
    card_path = Path(path) / CARD_FILE
    return json.loads(card_path.read_text()) if card_path.is_file() else {}


class NotARewardModelError(UsageError, ValueError):
    """A folder given as a reward model holds another kind of model (a causal LM, a multi-label classifier).
    A bad argument (ValueError) that the CLI reports in one line, as a usage error."""


def reward_model_problem(config: PretrainedConfig) -> str | None:
    """Why a model config is not a reward model's (a sequence classifier with one output), or None."""
    architectures = list(getattr(config, "architectures", None) or [])
    if architectures and not any(a.endswith("ForSequenceClassification") for a in architectures):
        return f"holds a {architectures[0]}"
    if config.num_labels != 1:
        return f"holds a classifier with {config.num_labels} labels"
    return None


def load_tokenizer(path: str | os.PathLike[str]) -> PreTrainedTokenizerBase:
    """The tokenizer saved in a reward-model folder; NotARewardModelError when it has none that loads
    (node.rm.model.load_tokenizer: also one that knows only the special tokens)."""
    return load_any_tokenizer(
        path, error=NotARewardModelError,
        fix="copy the tokenizer files (tokenizer.json, tokenizer_config.json, ...) of the model it was trained "
            "from into it, or pass the folder `rewardnode train` wrote")


class RewardScorer:
    """Scores (prompt, response) pairs with a saved reward model, truncating as in training."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        device: str = "cpu",
        max_length: int | None = None,
        *,
        expected_sha256: str | None = None,
    ) -> None:
        path = Path(path)
        if not (path / "config.json").is_file():
            raise ValueError(f"{path} is not a reward-model folder (no config.json); pass a save_reward_model folder")
        problem = reward_model_problem(AutoConfig.from_pretrained(path, local_files_only=True))
        if problem is not None:
            raise NotARewardModelError(f"{path} {problem}, not a reward model; pass a reward-model folder "
                                       "(`rewardnode train` writes one; any Hugging Face sequence classifier "
                                       "with num_labels = 1, such as a TRL reward model, works too)")
        if expected_sha256 is not None:
            actual = file_sha256(path / WEIGHTS_FILE)
            if actual != expected_sha256:
                raise ValueError(f"{path / WEIGHTS_FILE} has sha256 {actual}, expected {expected_sha256}; the "
                                 "artifact was modified or is another model: fetch it again from the registry")
        self.card = read_card(path)
        scoring = self.card.get("scoring", {})
        self.device = torch.device(device)
        self.tokenizer = load_tokenizer(path)
        self.model = AutoModelForSequenceClassification.from_pretrained(path, local_files_only=True).to(self.device)
        self.model.eval()
        if self.tokenizer.pad_token is None:  # saved decoders carry pad = eos; be lenient with older folders
            self.tokenizer.pad_token = self.tokenizer.eos_token
        limit = position_limit(self.model.config.to_dict())
        if max_length is not None and limit is not None and max_length > limit:
            raise ValueError(f"max_length = {max_length} is more than the model's {limit} positions; pass "
                             f"{limit} or less")
        length = max_length or int(scoring.get("max_length", 512))
        if limit is not None and length > limit:  # an older version's card, or none: the model reads no more
            log.info("%s: scoring with max_length %d, the model's positions (the card says %d)", path, limit,
                     length)
            length = limit
        self.encoder = PairEncoder(
            self.tokenizer,
            length,
            int(scoring.get("min_prompt_tokens", 64)),
            float(scoring.get("prompt_head_fraction", 0.25)),
        )

    def score(self, prompts: Sequence[str], responses: Sequence[str], batch_size: int = 32) -> list[float]:
        """One reward per (prompt, response), in input order; scored longest first to pad little."""
        ids, types, _ = self.encoder.encode(prompts, responses)
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        out = [0.0] * len(ids)
        with torch.inference_mode(), forward_context(self.device):
            for start in range(0, len(order), batch_size):
                idx = order[start: start + batch_size]
                batch = pad_batch([ids[i] for i in idx], [types[i] for i in idx] if types else None,
                                  self.encoder.pad_token_id)
                r = rewards(self.model, {k: v.to(self.device) for k, v in batch.items()}).float().cpu()  # (b,)
                for i, value in zip(idx, r.tolist(), strict=True):
                    out[i] = value
        return out

    __call__ = score
