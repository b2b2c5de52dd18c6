"""Batches cut into pieces on several CPU threads train the same model as one pass."""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest
import torch

from node.rm.model import disable_dropout, load_backbone
from node.rm.parallel import BatchSplitter, resolve_workers
from node.rm.train import train_reward_model

from .conftest import synthetic_pairs


def test_pieces_deal_the_batch_round_robin() -> None:
    splitter = BatchSplitter(3)
    assert splitter.pieces([9, 8, 7, 6, 5, 4, 3]) == [[9, 6, 3], [8, 5], [7, 4]]
    assert splitter.pieces([1, 2]) == [[1], [2]]


def test_gradients_add_up_and_pieces_run_on_other_threads() -> None:
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(4, 3))
    unused = torch.nn.Parameter(torch.randn(2))
    x = torch.randn(6, 3)
    threads: set[str] = set()

    wholes: set[tuple[float, int] | None] = set()

    def loss_of(piece: list[int], whole: tuple[float, int] | None) -> torch.Tensor:
        threads.add(threading.current_thread().name)
        wholes.add(whole)
        return (x[piece] @ weight.T).pow(2).sum() / 6

    before = torch.get_num_threads()
    loss = BatchSplitter(2).backward(loss_of, list(range(6)), [weight, unused], [0.5] * 6)
    assert wholes == {(3.0, 6)}
    split_grad = weight.grad.clone()
    weight.grad = None
    expected = loss_of(list(range(6)), None)
    expected.backward()
    torch.testing.assert_close(loss, expected.detach())
    torch.testing.assert_close(split_grad, weight.grad)
    assert unused.grad is None and len(threads) == 2 and torch.get_num_threads() == before


def test_a_failing_piece_raises_and_restores_the_thread_count() -> None:
    weight = torch.nn.Parameter(torch.ones(2))

    def loss_of(piece: list[int], whole: tuple[float, int] | None) -> torch.Tensor:
        if 1 in piece:
            raise RuntimeError("piece failed")
        return weight.sum()

    before = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="piece failed"):
        BatchSplitter(2).backward(loss_of, [0, 1], [weight], [1.0, 1.0])
    assert torch.get_num_threads() == before


def test_split_training_equals_one_pass(tiny_config, tmp_path) -> None:
    config = replace(tiny_config, batch_size=8, center_coef=0.01, epochs=2)
    pairs = synthetic_pairs(24)
    pairs[3] = replace(pairs[3], weight=3.0, p=0.7)  # weighted and soft pairs: per-piece normalization matters
    one = train_reward_model(pairs, [], replace(config, cpu_workers=1), out_dir=tmp_path / "a", progress=False)
    runs = [train_reward_model(pairs, [], replace(config, cpu_workers=3), out_dir=tmp_path / name, progress=False)
            for name in ("b", "c")]
    expected = one.model.state_dict()
    for name, value in runs[0].model.state_dict().items():
        torch.testing.assert_close(value, expected[name], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(value, runs[1].model.state_dict()[name], rtol=0, atol=0)  # reproducible


def test_workers_off_cpu_with_dropout_and_capped_by_batch(bert_dir) -> None:
    model, _ = load_backbone(str(bert_dir))  # BERT dropout is on until disabled
    cpu = torch.device("cpu")
    assert resolve_workers(0, cpu, model, 16) == 1
    with pytest.raises(ValueError, match="cpu_workers = 2 needs dropout off"):
        resolve_workers(2, cpu, model, 16)
    disable_dropout(model)
    assert resolve_workers(4, cpu, model, 3) == 3
    assert resolve_workers(4, torch.device("cuda"), model, 16) == 1
    assert resolve_workers(1, cpu, model, 16) == 1


@pytest.mark.parametrize(("threads", "batch_size", "pieces"),
                         [(2, 16, 2), (8, 16, 8), (16, 16, 1), (16, 64, 1), (4, 7, 1), (4, 8, 4), (1, 16, 1)])
def test_automatic_workers_split_only_where_measured_to_pay(bert_dir, threads, batch_size, pieces) -> None:
    model, _ = load_backbone(str(bert_dir))
    disable_dropout(model)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        assert resolve_workers(0, torch.device("cpu"), model, batch_size) == pieces
        assert resolve_workers(threads, torch.device("cpu"), model, batch_size) == min(threads, batch_size)
    finally:
        torch.set_num_threads(before)
