"""Trained tiny reward models and their ONNX exports, shared by test_export.py and test_standalone.py.

Imported explicitly by those modules (pytest loads only files named conftest.py on its own).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from node.rm.artifact import save_reward_model
from node.rm.config import TrainConfig
from node.rm.data import PreferencePair
from node.rm.export import ExportReport, export_onnx
from node.rm.train import train_reward_model

from .conftest import synthetic_pairs

LONG_PROMPT = " ".join(f"w{i % 40} the question" for i in range(60))  # far over max_length = 48: cut in the middle


@dataclass(frozen=True)
class TrainedRM:
    model_dir: Path
    dev: list[PreferencePair]


@dataclass(frozen=True)
class Exported:
    rm: TrainedRM
    folder: Path
    report: ExportReport


def dev_pairs(n: int = 60) -> list[PreferencePair]:
    """Held-out synthetic pairs; a few with prompts long enough to be cut in the middle."""
    pairs = synthetic_pairs(n, seed=11)
    for i in range(0, n, 10):
        pairs[i] = replace(pairs[i], prompt=LONG_PROMPT + pairs[i].prompt)
    return pairs


def _train(base: Path, root: Path) -> TrainedRM:
    config = TrainConfig(
        base_model=str(base), max_length=48, min_prompt_tokens=8, batch_size=8, eval_batch_size=32,
        learning_rate=3e-3, warmup_ratio=0.0, num_threads=1, device="cpu", log_every=5, epochs=3,
    )
    dev = dev_pairs()
    result = train_reward_model(synthetic_pairs(64), dev, config, out_dir=root / "run", progress=False)
    save_reward_model(result.model, result.tokenizer, root / "model", {"config": config.to_dict()})
    return TrainedRM(root / "model", dev)


@pytest.fixture(scope="session")
def bert_rm(bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainedRM:
    """The tiny BERT trained for 3 epochs (dev accuracy near 1) and saved as an artifact."""
    return _train(bert_dir, tmp_path_factory.mktemp("bert-rm"))


@pytest.fixture(scope="session")
def llama_rm(llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainedRM:
    """The tiny Llama trained for 3 epochs and saved as an artifact."""
    return _train(llama_dir, tmp_path_factory.mktemp("llama-rm"))


def _export(rm: TrainedRM, root: Path) -> Exported:
    folder = root / "onnx"
    report = export_onnx(rm.model_dir, folder, int8=True, dev_pairs=rm.dev, measure_latency=False)
    return Exported(rm, folder, report)


@pytest.fixture(scope="session")
def bert_onnx(bert_rm: TrainedRM, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """fp32 + int8 export of the trained tiny BERT, gated on its dev pairs."""
    return _export(bert_rm, tmp_path_factory.mktemp("bert-onnx"))


@pytest.fixture(scope="session")
def llama_onnx(llama_rm: TrainedRM, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """fp32 + int8 export of the trained tiny Llama, gated on its dev pairs."""
    return _export(llama_rm, tmp_path_factory.mktemp("llama-onnx"))


@pytest.fixture(params=["bert", "llama"])
def exported(request: pytest.FixtureRequest) -> Exported:
    """Each exported tiny model in turn: encoder (token types) and decoder (no token types)."""
    return request.getfixturevalue(f"{request.param}_onnx")
