"""Micro-batching: concurrent requests share scorer calls and each gets exactly its own scores."""

from __future__ import annotations

import asyncio

import pytest

from node.http import ServiceUnavailable
from node.http.scoring import MicroBatcher

from .conftest import SCORER, fake_reward


def requests_for(n: int) -> list[list[dict[str, str]]]:
    """n requests of 1..3 items with distinct texts."""
    return [[{"prompt": f"q{i}" * (k + 1), "response": "r" * (i + 2 * k + 1)} for k in range(1 + i % 3)]
            for i in range(n)]


async def test_concurrent_requests_are_scored_in_one_call_with_exact_slices(make_client, scorers) -> None:
    reqs = requests_for(8)
    total = sum(len(r) for r in reqs)
    # The window is long; the batch closes because max_batch items arrived, so this is not timing-dependent.
    client = await make_client(batch_window_ms=30_000, max_batch=total)
    responses = await asyncio.gather(*(client.post("/v1/score", json={"items": r}, headers=SCORER) for r in reqs))
    bodies = [await resp.json() for resp in responses]

    for items, body in zip(reqs, bodies, strict=True):  # each request got the scores of scoring it alone
        assert body == {"model": "rm-a", "scores": [fake_reward(it["prompt"], it["response"]) for it in items]}
    calls = scorers["rm-a"].calls
    assert len(calls) == 1 < len(reqs)
    assert sorted(calls[0][1]) == sorted(it["response"] for r in reqs for it in r)


async def test_score_and_compare_requests_share_batches(make_client, scorers) -> None:
    client = await make_client(batch_window_ms=30_000, max_batch=5)
    score, compare = await asyncio.gather(
        client.post("/v1/score", json={"items": [{"prompt": "ab", "response": "cdef"}] * 2}, headers=SCORER),
        client.post("/v1/compare", json={"prompt": "ab", "responses": ["x", "yy", "zzz"]}, headers=SCORER),
    )
    assert (await score.json())["scores"] == [1.5, 1.5]
    assert (await compare.json())["scores"] == [0.0, 0.5, 1.0]
    assert len(scorers["rm-a"].calls) == 1


async def test_requests_for_different_models_are_never_mixed(make_client, scorers) -> None:
    client = await make_client(batch_window_ms=0)
    a, b = await asyncio.gather(
        client.post("/v1/score", json={"model": "rm-a", "items": [{"prompt": "", "response": "xx"}]}, headers=SCORER),
        client.post("/v1/score", json={"model": "rm-b", "items": [{"prompt": "", "response": "xx"}]}, headers=SCORER),
    )
    assert (await a.json())["scores"] == [1.0] and (await b.json())["scores"] == [101.0]
    assert scorers["rm-a"].calls == [([""], ["xx"])] and scorers["rm-b"].calls == [([""], ["xx"])]


class Recorder:
    """An async batch scorer that records batch sizes; scores are 10*(job id) + position."""

    def __init__(self, fail: bool = False) -> None:
        self.batches: list[list[str]] = []
        self.fail = fail
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self, prompts: list[str], responses: list[str]) -> list[float]:
        self.batches.append(list(responses))
        await self.gate.wait()
        if self.fail:
            raise RuntimeError("scorer broke")
        return [float(r) for r in responses]


def job(job_id: int, n: int) -> tuple[list[str], list[str]]:
    return [""] * n, [str(10 * job_id + k) for k in range(n)]


async def test_batches_hold_whole_requests_up_to_max_batch() -> None:
    rec = Recorder()
    batcher = MicroBatcher(rec, window_s=0.0, max_batch=5)
    sizes = [3, 2, 4, 7, 1]  # 7 > max_batch: scored alone, never split
    results = await asyncio.gather(*(batcher.score(*job(i, n)) for i, n in enumerate(sizes)))
    assert results == [[float(10 * i + k) for k in range(n)] for i, n in enumerate(sizes)]
    assert [len(b) for b in rec.batches] == [5, 4, 7, 1]
    assert batcher.batches == 4 and batcher.pending_items == 0
    await batcher.close()


async def test_a_scorer_failure_reaches_every_request_of_the_batch_and_the_batcher_goes_on() -> None:
    rec = Recorder(fail=True)
    batcher = MicroBatcher(rec, window_s=0.0, max_batch=10)
    results = await asyncio.gather(batcher.score(*job(0, 2)), batcher.score(*job(1, 1)), return_exceptions=True)
    assert [str(r) for r in results] == ["scorer broke", "scorer broke"]
    rec.fail = False
    assert await batcher.score(*job(2, 1)) == [20.0]
    await batcher.close()


async def test_a_cancelled_request_is_dropped_and_close_fails_the_rest() -> None:
    rec = Recorder()
    rec.gate.clear()  # the first batch hangs in the scorer
    batcher = MicroBatcher(rec, window_s=0.0, max_batch=2)
    first = asyncio.create_task(batcher.score(*job(0, 2)))
    while not rec.batches:
        await asyncio.sleep(0)
    gone = asyncio.create_task(batcher.score(*job(1, 1)))
    queued = asyncio.create_task(batcher.score(*job(2, 1)))
    await asyncio.sleep(0)
    gone.cancel()  # the client disconnected while queued
    rec.gate.set()
    assert await first == [0.0, 1.0] and await queued == [20.0]
    assert rec.batches == [["0", "1"], ["20"]]  # the cancelled request was never scored

    rec.gate.clear()
    stuck = asyncio.create_task(batcher.score(*job(3, 1)))
    while len(rec.batches) < 3:
        await asyncio.sleep(0)
    waiting = asyncio.create_task(batcher.score(*job(4, 1)))
    await asyncio.sleep(0)
    await batcher.close()
    for task in (stuck, waiting):
        with pytest.raises(ServiceUnavailable):
            await task
    with pytest.raises(ServiceUnavailable, match="shutting down"):
        await batcher.score(*job(5, 1))
