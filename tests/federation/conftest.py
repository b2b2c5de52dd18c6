"""Tiny federation fixtures: a 2-layer BERT built from a config, node homes with their own pairs."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertModel
from transformers.utils import logging as hf_logging

from node.demo_models import wordpiece_tokenizer

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["FLWR_TELEMETRY_ENABLED"] = "0"
os.environ["FLWR_DISABLE_UPDATE_CHECK"] = "1"
hf_logging.set_verbosity_error()
torch.set_num_threads(1)

WORDS = [f"w{i}" for i in range(40)] + "the a is of to and what how why please help me tell".split()
MARKER, DISTRACTOR = "excellent", "wonderful"


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def secret_pairs(n: int, seed: int, tag: str) -> list[dict[str, str]]:
    """Learnable pairs whose prompts carry a node-unique secret tag (the privacy test looks for it)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        prompt = f"{tag} secret{i} " + _sentence(rng, rng.randint(3, 8))
        chosen = _sentence(rng, 3) + f" {MARKER} " + _sentence(rng, 2)
        rejected = _sentence(rng, 3) + f" {DISTRACTOR} " + _sentence(rng, 2)
        out.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return out


@pytest.fixture(scope="session")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("fed-tiny-bert"))


def build_tiny_bert(out: Path) -> Path:
    """A 1-layer BERT (hidden 16) + WordPiece tokenizer trained here, saved to `out` (also used by scripts/)."""
    rng = random.Random(0)
    corpus = [_sentence(rng, 10) + f" {MARKER} {DISTRACTOR} secret tag" for _ in range(300)]
    tokenizer = wordpiece_tokenizer(corpus, 200)
    tokenizer.save_pretrained(out)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id)
    BertModel(config).save_pretrained(out)
    return out


def cli(*argv: str) -> int:
    from node.cli import main

    return main(list(argv))


def online_supernodes(workdir: Path) -> list[int]:
    """Flower node ids of the SuperNodes online at the SuperLink that workdir's `flwr` connection names
    (`federation.deployment.write_connection(workdir / "flwr", ...)`)."""
    import subprocess

    from federation.deployment import _bin, flower_env

    listing = subprocess.run([_bin("flwr"), "supernode", "list", "federation", "--format", "json"],
                             env=flower_env(workdir / "flwr"), capture_output=True, text=True, cwd=workdir)
    nodes = json.loads(listing.stdout or "{}").get("nodes", [])
    return [int(n["node-id"]) for n in nodes if n["status"] == "online"]


def build_federation(root: Path, bert_dir: Path, n_members: int = 3, *, pairs: int = 16,
                     extra: tuple[str, ...] = ()) -> tuple[Path, list[Path]]:
    """Under `root`: a coordinator home + member homes (each with its own pairs), agreement created and joined."""
    from protocol.identity import Identity

    coord = root / "coord"
    assert cli("--home", str(coord), "init", "--name", "coord") == 0
    homes, keys = [], []
    for i in range(n_members):
        home = root / f"org{i}"
        assert cli("--home", str(home), "init", "--name", f"org{i}") == 0
        data = home / "pairs.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in secret_pairs(pairs, seed=i, tag=f"tag{i}x")))
        assert cli("--home", str(home), "import", str(data), "--source", "local") == 0
        data.unlink()
        keys.append(Identity.load(home / "identity.key").public_key_hex)
        homes.append(home)
    args = ["--home", str(coord), "federation", "create", "fed", "--base-model", str(bert_dir), "--rounds", "2",
            "--max-length", "32", "--learning-rate", "0.01", "--round-timeout", "60", *extra]
    for k in keys:
        args += ["--member", k]
    assert cli(*args) == 0
    agreement = coord / "federation" / "fed" / "agreement.json"
    ca = coord / "federation" / "fed" / "tls" / "ca.pem"
    for home in homes:
        assert cli("--home", str(home), "federation", "join", "fed", "--coordinator", "127.0.0.1:9092",
                   "--agreement", str(agreement), "--ca", str(ca)) == 0
    return coord, homes


@pytest.fixture
def make_federation(tmp_path: Path, bert_dir: Path) -> Callable[..., tuple[Path, list[Path]]]:
    """`build_federation` under this test's tmp_path."""

    def build(n_members: int = 3, *, pairs: int = 16, extra: tuple[str, ...] = ()) -> tuple[Path, list[Path]]:
        return build_federation(tmp_path, bert_dir, n_members, pairs=pairs, extra=extra)

    return build
