"""Checks the reward-model commands run before any work: a mistake is refused at once, not after training.

- `check_out_dir`: an output folder is new (or empty) and can be created where it is asked for.
- `position_limit` / `backbone_positions`: the most tokens a model reads in one sequence, which
  max_length must not exceed (the position embeddings end there: a longer batch crashes mid-training).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from node.errors import UsageError

POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length")
"""config.json keys that hold the number of positions: BERT/Llama-likes, GPT-2, others."""
PADDING_OFFSET_TYPES = frozenset({
    "roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "roberta-prelayernorm", "data2vec-text",
    "longformer", "mpnet", "ibert", "luke",
})
"""Model types that number positions from pad_token_id + 1, so pad_token_id + 1 of their positions are never
used (RoBERTa's 514 positions read 512 tokens)."""


def position_limit(config: Mapping[str, Any]) -> int | None:
    """The most tokens one sequence can have under a model's config.json; None when the config does not say.

    >>> position_limit({"model_type": "bert", "max_position_embeddings": 512})
    512
    >>> position_limit({"model_type": "roberta", "max_position_embeddings": 514, "pad_token_id": 1})
    512
    """
    for key in POSITION_KEYS:
        n = config.get(key)
        if isinstance(n, int) and not isinstance(n, bool) and n > 0:
            break
    else:
        return None
    if config.get("model_type") in PADDING_OFFSET_TYPES:
        pad = config.get("pad_token_id")
        n -= (pad if isinstance(pad, int) and pad >= 0 else 1) + 1
    return n if n > 0 else None


def backbone_positions(base_model: str) -> int | None:
    """`position_limit` of a backbone ("minilm" or a local model folder), read from its config.json.

    None when the folder or its config cannot be read: loading the backbone reports that, with its fix.
    """
    from node.rm.model import resolve_backbone_path

    try:
        path = Path(resolve_backbone_path(base_model)) / "config.json"
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, ImportError):
        return None
    return position_limit(config) if isinstance(config, dict) else None


def check_out_dir(out: Path, flag: str = "--out") -> None:
    """UsageError unless `out` is a new or empty folder whose parent is (or can be made as) a writable folder.

    Tries it: a temporary folder is made (and removed) in the nearest existing parent, so read-only file
    systems, permissions (also for root) and /proc-like folders are caught as well.
    """
    try:
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            what = "is a file" if not out.is_dir() else "is not empty"
            raise UsageError(f"{flag} {out} already exists and {what}; choose a new {flag} DIR or delete it")
        parent = out.absolute().parent
        while not parent.exists() and not parent.is_symlink() and parent != parent.parent:
            parent = parent.parent
    except OSError as e:  # a parent that may not be searched
        raise UsageError(f"{flag} {out}: cannot look into it ({e.strerror or e}); choose a {flag} DIR in a "
                         "folder you can write to") from None
    if not parent.is_dir():
        what = "a file" if parent.is_file() else "not a folder"
        raise UsageError(f"{flag} {out}: {parent} is {what}, so no folder can be made inside it; choose a "
                         f"{flag} DIR in a folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".rewardnode-check.", dir=parent))
    except OSError as e:
        raise UsageError(f"{flag} {out}: cannot create folders in {parent} ({e.strerror or e}); choose a "
                         f"{flag} DIR in a folder you can write to") from None
