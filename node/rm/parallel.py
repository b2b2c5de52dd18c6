"""Data parallelism over CPU cores inside one process: a batch is cut into pieces, each piece runs
forward and backward on its own thread with one intra-op thread, and the pieces' gradients are added.

Why: a small encoder's multi-threaded step spends much of its time outside large matmuls
(elementwise ops, layer norms, the attention kernel, the threads' synchronization), which scale
poorly over cores; independent single-threaded pieces keep every core busy. On the 2-core
development machine MiniLM trained at 5.75 pairs/s as two pieces against 5.00 as one 2-thread pass
(scripts/bench_reward.py, 16-pair batches of up to 256 tokens; README, Performance), and on a
16-core server 13.7 as eight pieces against 12.1 as one 8-thread pass; but 16 pieces of one pair
each on 16 threads ran 20.2 against 27.0 for one 16-thread pass (every piece pays for a full set of
gradient buffers, and 16 threads take turns at the interpreter). `resolve_workers` picks accordingly.

The parameters are shared, not replicated: every piece but the first takes `torch.autograd.grad`,
which writes no `.grad`, so nothing is written concurrently and nothing needs syncing after the
optimizer step. Each piece runs on one thread and the gradients are added in a fixed order, so a
seeded run stays reproducible. Dropout would draw from torch's one global generator in an order
the threads decide, so a model with active dropout always runs as one piece.

torch's intra-op thread count is process-wide: while the pieces run it is 1 for every thread of the
process, so this suits a process that trains one model at a time (`rewardnode train`), not one whose
other threads run torch work meanwhile (federation members of the in-process engine share one
process, so `node.federated` keeps one multi-threaded pass).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)


def has_active_dropout(model: nn.Module) -> bool:
    """True if a forward pass in training mode would draw random numbers for dropout."""
    for module in model.modules():
        if isinstance(module, nn.Dropout) and module.p > 0:
            return True
        config = getattr(module, "config", None)
        if float(getattr(config, "attention_dropout", 0.0) or 0.0) > 0:  # decoders' functional attention dropout
            return True
    return False


AUTO_MAX_PIECES = 8
"""The automatic choice splits a batch on up to this many intra-op threads (one piece each), not more."""
AUTO_MIN_PIECE_PAIRS = 2
"""...and only when every piece gets at least this many pairs."""


def resolve_workers(requested: int, device: torch.device, model: nn.Module, batch_size: int) -> int:
    """Pieces per batch: requested (at most batch_size), 1 off CPU. requested 0 is the automatic
    choice: one piece per intra-op thread when there are 2 to AUTO_MAX_PIECES threads and each piece
    gets AUTO_MIN_PIECE_PAIRS pairs or more, else one pass (the measurements in the module docstring).

    An explicit request for more than one piece on a model with active dropout is an error; the
    automatic choice falls back to one piece there.
    """
    if device.type != "cpu":
        return 1
    threads = torch.get_num_threads()
    auto = threads if threads <= AUTO_MAX_PIECES and batch_size >= AUTO_MIN_PIECE_PAIRS * threads else 1
    n = min(requested or auto, batch_size)
    if n > 1 and has_active_dropout(model):
        if requested > 1:
            raise ValueError(
                f"rm.cpu_workers = {requested} needs dropout off (rm.disable_dropout = true, rm.lora_dropout = 0): "
                "threads would draw dropout masks from one random generator in no fixed order; use cpu_workers = 1"
            )
        log.info("dropout is on: each batch runs as one multi-threaded pass (cpu_workers 1)")
        return 1
    return max(1, n)


class BatchSplitter:
    """Runs a batch's forward and backward as `workers` pieces on as many threads.

    `backward(loss_of, batch_idx, params, weights)` calls `loss_of(piece, whole)` for each piece of
    batch_idx (every workers-th index, so pieces of a length-sorted batch get the same mix of lengths)
    and leaves the sum of the pieces' gradients in each parameter's `.grad` (added to what is there,
    like `loss.backward()`). whole = (sum of weights[i] over the batch, batch size) is what
    `node.rm.loss.reward_loss` normalizes a piece by, so that the pieces' losses add up to the
    batch's; with one piece whole is None and this is a plain `loss_of(batch_idx, None).backward()`.
    """

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise ValueError(f"workers = {workers} must be >= 1")
        self.workers = workers

    def pieces(self, batch_idx: Sequence[int]) -> list[list[int]]:
        """batch_idx dealt round-robin into at most `workers` non-empty pieces."""
        return [list(batch_idx[i:: self.workers]) for i in range(min(self.workers, len(batch_idx)))]

    def backward(self, loss_of: Callable[[list[int], tuple[float, int] | None], Tensor], batch_idx: Sequence[int],
                 params: Sequence[nn.Parameter], weights: Sequence[float]) -> Tensor:
        """Backpropagate the batch's loss piece by piece; returns the batch's loss, detached."""
        pieces = self.pieces(batch_idx)
        if len(pieces) == 1:
            loss = loss_of(list(batch_idx), None)
            loss.backward()
            return loss.detach()
        whole = (float(sum(weights[i] for i in batch_idx)), len(batch_idx))

        def grads_of(piece: list[int]) -> tuple[Tensor, tuple[Tensor | None, ...]]:
            loss = loss_of(piece, whole)
            return loss.detach(), torch.autograd.grad(loss, params, allow_unused=True)

        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # process-wide: every piece runs on its own thread alone
        futures: list[Future[tuple[Tensor, tuple[Tensor | None, ...]]]] = []
        # threads last one step (starting them costs microseconds), so nothing outlives a failed run
        pool = ThreadPoolExecutor(len(pieces) - 1, thread_name_prefix="rm-piece")
        try:
            futures = [pool.submit(grads_of, piece) for piece in pieces[1:]]
            loss = loss_of(pieces[0], whole)
            loss.backward()  # the first piece writes .grad directly: one gradient buffer fewer
            total = loss.detach()
            for future in futures:
                piece_loss, grads = future.result()
                total = total + piece_loss
                with torch.no_grad():
                    for p, g in zip(params, grads, strict=True):
                        if g is None:
                            continue
                        if p.grad is None:
                            p.grad = g
                        else:
                            p.grad.add_(g)
            return total
        finally:
            pool.shutdown(wait=True)  # a failed piece: the others finish before the error goes up
            torch.set_num_threads(threads)
