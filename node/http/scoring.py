"""The scoring API: text in, reward out, for any LLM backend.

    POST /v1/score    {"model"?, "items": [{"prompt", "response"}, ...]} -> {"model", "scores"}
    POST /v1/compare  {"model"?, "prompt", "responses": [r0, r1, ...]}   -> {"model", "scores", "ranking",
                                                                            "preferences", "p_first_better"?}
    GET  /v1/models   -> {"models": [{"id", "default", "loaded"}], "default"}

Compare reads scores as Bradley-Terry strengths: P(response i beats response j) = sigmoid(r_i - r_j),
the model the reward model was trained under. "preferences" lists every pair i < j once as
[i, j, P(i beats j)] (P(j beats i) is 1 minus it); "ranking" is indices best first (ties keep input
order); "p_first_better" = P(response 0 beats response 1) is added when there are exactly 2.

Scoring is CPU-bound torch, so it runs on one worker thread and the event loop stays free. Concurrent
requests for one model are coalesced by a `MicroBatcher` into one scorer call.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

from aiohttp import web

from node.http.auth import Role
from node.http.config import ServerConfig
from node.http.errors import HttpError, NotFound, ServiceUnavailable
from node.http.routes import (
    CONFIG_KEY,
    Endpoint,
    Feature,
    Schema,
    check_fields,
    expect_array,
    expect_object,
    expect_optional_id,
    expect_text,
    json_response,
    read_json_object,
)

log = logging.getLogger("rewardnode.http.scoring")

# Wire keys.
KEY_MODEL = "model"
KEY_ITEMS = "items"
KEY_PROMPT = "prompt"
KEY_RESPONSE = "response"
KEY_RESPONSES = "responses"
KEY_SCORES = "scores"
KEY_RANKING = "ranking"
KEY_PREFERENCES = "preferences"
KEY_P_FIRST_BETTER = "p_first_better"
KEY_MODELS = "models"
KEY_ID = "id"
KEY_DEFAULT = "default"
KEY_LOADED = "loaded"


class Scorer(Protocol):
    """Anything that scores (prompt, response) pairs; `node.rm.artifact.RewardScorer` is one."""

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]: ...


ScorerLoader = Callable[[], Scorer]


class ScorerRegistry:
    """Model id -> scorer, each loaded on first use (from the scoring thread), plus a default id."""

    def __init__(self, loaders: Mapping[str, ScorerLoader], default: str | None = None) -> None:
        if not loaders:
            raise ValueError("a ScorerRegistry needs at least one model; train one with `rewardnode train` first")
        for model_id in loaders:
            if not isinstance(model_id, str) or not model_id:
                raise ValueError(f"model id {model_id!r} must be a non-empty string")
        self._loaders = dict(loaders)
        self.default_id = next(iter(self._loaders)) if default is None else default
        if self.default_id not in self._loaders:
            raise ValueError(f"default model {self.default_id!r} is not one of {sorted(self._loaders)}")
        self._loaded: dict[str, Scorer] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_scorers(cls, scorers: Mapping[str, Scorer], default: str | None = None) -> ScorerRegistry:
        """A registry of scorers that are already loaded."""
        registry = cls({k: partial(_same, s) for k, s in scorers.items()}, default)
        registry._loaded.update(scorers)
        return registry

    @classmethod
    def from_artifacts(
        cls, paths: Mapping[str, str | os.PathLike[str]], default: str | None = None, *, device: str = "cpu",
        batch_size: int = 32,
    ) -> ScorerRegistry:
        """Saved reward-model folders (node.rm.artifact.save_reward_model), loaded lazily as RewardScorers."""

        def loader(path: str | os.PathLike[str]) -> Scorer:
            from node.rm.artifact import RewardScorer  # torch/transformers load only when a model is used

            return _BatchSized(RewardScorer(path, device=device), batch_size)

        return cls({model_id: partial(loader, path) for model_id, path in paths.items()}, default)

    @property
    def ids(self) -> tuple[str, ...]:
        """Every model id, in registration order."""
        return tuple(self._loaders)

    def resolve(self, model_id: str | None) -> str:
        """The id to use for a request: `model_id`, or the default when None; 404 for an unknown id."""
        if model_id is None:
            return self.default_id
        if model_id not in self._loaders:
            raise NotFound(f"no model {model_id!r} on this node; GET /v1/models lists the models (available: "
                           f"{', '.join(self.ids)}), or omit 'model' to use the default {self.default_id!r}")
        return model_id

    def is_loaded(self, model_id: str) -> bool:
        """True once the model's scorer is in memory."""
        return model_id in self._loaded

    def load(self, model_id: str) -> Scorer:
        """The scorer of `model_id`, loading it on first use (blocking: call it off the event loop)."""
        with self._lock:
            scorer = self._loaded.get(model_id)
            if scorer is None:
                scorer = self._loaded[model_id] = self._loaders[model_id]()
            return scorer


def _same(scorer: Scorer) -> Scorer:
    return scorer


class _BatchSized:
    """A RewardScorer that scores in forward passes of `batch_size`."""

    def __init__(self, scorer: Any, batch_size: int) -> None:
        self.scorer, self.batch_size = scorer, batch_size

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        return list(self.scorer.score(prompts, responses, batch_size=self.batch_size))


# ---- micro-batching ----

@dataclass(frozen=True)
class _Job:
    prompts: tuple[str, ...]
    responses: tuple[str, ...]
    future: asyncio.Future[list[float]]
    enqueued: float  # loop.time()


BatchScoreFn = Callable[[list[str], list[str]], Awaitable[list[float]]]


class MicroBatcher:
    """Coalesces concurrent `score` calls for one model into few calls of `score_batch`.

    A batch closes when it holds `max_batch` items or when its oldest request has waited `window_s`;
    requests are never split (one larger than max_batch is scored alone), and each caller gets back
    exactly its own slice, in order. A batch whose scorer call fails is scored again request by request,
    so only the request that broke it gets the error.
    """

    def __init__(self, score_batch: BatchScoreFn, *, window_s: float, max_batch: int) -> None:
        self._score_batch = score_batch
        self.window_s = window_s
        self.max_batch = max_batch
        self._pending: deque[_Job] = deque()
        self._pending_items = 0
        self._in_flight: list[_Job] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.batches = 0
        """Scorer calls made so far."""

    @property
    def pending_items(self) -> int:
        """Items queued and not yet handed to the scorer."""
        return self._pending_items

    async def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        """The scores of these pairs, scored together with whatever else is queued."""
        if self._closed:
            raise ServiceUnavailable("the server is shutting down; retry on another node or after it restarts")
        if not prompts:
            return []
        loop = asyncio.get_running_loop()
        job = _Job(tuple(prompts), tuple(responses), loop.create_future(), loop.time())
        self._pending.append(job)
        self._pending_items += len(job.prompts)
        self._wakeup.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="rewardnode-micro-batcher")
        return await job.future  # a cancelled caller (client gone) cancels only its own future

    def _take(self) -> list[_Job]:
        """Pop the next batch: whole jobs up to max_batch items (at least one job); drop cancelled ones."""
        jobs: list[_Job] = []
        n = 0
        while self._pending:
            job = self._pending[0]
            if jobs and n + len(job.prompts) > self.max_batch:
                break
            self._pending.popleft()
            self._pending_items -= len(job.prompts)
            if not job.future.done():
                jobs.append(job)
                n += len(job.prompts)
        return jobs

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if not self._pending:
                continue
            deadline = self._pending[0].enqueued + self.window_s  # the oldest request waits at most window_s
            while self._pending_items < self.max_batch and (timeout := deadline - loop.time()) > 0:
                try:
                    await asyncio.wait_for(self._wakeup.wait(), timeout)
                except TimeoutError:
                    break
                self._wakeup.clear()
            jobs = self._in_flight = self._take()
            if self._pending:
                self._wakeup.set()  # more is queued: go again right after this batch
            if not jobs:
                continue
            self.batches += 1
            await self._score_jobs(jobs)  # cancelled by close(): it fails _in_flight
            self._in_flight = []

    async def _score_jobs(self, jobs: list[_Job]) -> None:
        """Score `jobs` in one call and give each its slice.

        If that call fails with an unexpected error and the batch holds several requests, each is scored
        alone, so one request the scorer cannot handle fails by itself and the others still get their
        scores. An HttpError (e.g. 503, the model did not load) concerns the whole batch: every job gets it.
        """
        prompts = [p for job in jobs for p in job.prompts]
        responses = [r for job in jobs for r in job.responses]
        try:
            scores = await self._score_batch(prompts, responses)
        except Exception as e:  # noqa: BLE001 - handed to the waiting requests, never lost
            if len(jobs) == 1 or isinstance(e, HttpError):
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(e)
                return
            for job in jobs:  # isolate the failing request
                if not job.future.done():
                    self.batches += 1
                    await self._score_jobs([job])
            return
        start = 0
        for job in jobs:
            end = start + len(job.prompts)
            if not job.future.done():
                job.future.set_result(scores[start:end])
            start = end

    async def close(self) -> None:
        """Stop the batcher; queued and in-flight requests get 503."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for job in (*self._in_flight, *self._pending):
            if not job.future.done():
                job.future.set_exception(ServiceUnavailable("the server shut down before scoring this request; "
                                                            "retry"))
        self._pending.clear()
        self._pending_items = 0


class ScoringService:
    """One worker thread that runs every scorer, fed by one MicroBatcher per model."""

    def __init__(self, registry: ScorerRegistry, *, window_s: float, max_batch: int) -> None:
        self.registry = registry
        self.window_s = window_s
        self.max_batch = max_batch
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rewardnode-scoring")
        self.batchers: dict[str, MicroBatcher] = {}

    async def score(self, model_id: str, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        """Scores of (prompt, response) pairs with model `model_id` (already resolved)."""
        batcher = self.batchers.get(model_id)
        if batcher is None:
            batcher = self.batchers[model_id] = MicroBatcher(
                partial(self._score_in_thread, model_id), window_s=self.window_s, max_batch=self.max_batch
            )
        return await batcher.score(prompts, responses)

    async def _score_in_thread(self, model_id: str, prompts: list[str], responses: list[str]) -> list[float]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._score_blocking, model_id, prompts, responses)

    def _score_blocking(self, model_id: str, prompts: list[str], responses: list[str]) -> list[float]:
        try:
            scorer = self.registry.load(model_id)
        except Exception:
            log.exception("loading model %r failed", model_id)
            raise ServiceUnavailable(f"model {model_id!r} could not be loaded; the server log has the cause (fix "
                                     "the model folder, or use another model)") from None
        scores = [float(s) for s in scorer.score(prompts, responses)]
        if len(scores) != len(prompts):
            raise RuntimeError(f"scorer {model_id!r} returned {len(scores)} scores for {len(prompts)} items")
        if not all(math.isfinite(s) for s in scores):
            raise RuntimeError(f"scorer {model_id!r} returned a non-finite score")
        return scores

    async def close(self) -> None:
        """Stop the batchers and the worker thread (a running scorer call finishes in the background)."""
        for batcher in self.batchers.values():
            await batcher.close()
        self._executor.shutdown(wait=False, cancel_futures=True)


SCORING_KEY = web.AppKey("rewardnode.scoring", ScoringService)


# ---- request and answer types ----

@dataclass(frozen=True)
class ScoreItem:
    prompt: str
    response: str


@dataclass(frozen=True)
class ScoreRequest:
    """A parsed POST /v1/score body."""

    model: str | None
    items: tuple[ScoreItem, ...]

    @classmethod
    def from_json(cls, data: Mapping[str, Any], config: ServerConfig) -> ScoreRequest:
        """Validate the body; 422 names the first wrong field."""
        check_fields(data, "", required=(KEY_ITEMS,), optional=(KEY_MODEL,))
        model = expect_optional_id(data.get(KEY_MODEL), KEY_MODEL)
        raw = expect_array(data[KEY_ITEMS], KEY_ITEMS, min_len=1, max_len=config.max_items, limit_name="max_items")
        items = []
        for i, entry in enumerate(raw):
            where = f"{KEY_ITEMS}[{i}]"
            obj = expect_object(entry, where)
            check_fields(obj, where, required=(KEY_PROMPT, KEY_RESPONSE))
            items.append(ScoreItem(
                expect_text(obj[KEY_PROMPT], f"{where}.{KEY_PROMPT}", max_chars=config.max_text_chars, allow_empty=True),
                expect_text(obj[KEY_RESPONSE], f"{where}.{KEY_RESPONSE}", max_chars=config.max_text_chars,
                            allow_empty=False),
            ))
        return cls(model, tuple(items))


@dataclass(frozen=True)
class CompareRequest:
    """A parsed POST /v1/compare body."""

    model: str | None
    prompt: str
    responses: tuple[str, ...]

    @classmethod
    def from_json(cls, data: Mapping[str, Any], config: ServerConfig) -> CompareRequest:
        """Validate the body; 422 names the first wrong field."""
        check_fields(data, "", required=(KEY_PROMPT, KEY_RESPONSES), optional=(KEY_MODEL,))
        model = expect_optional_id(data.get(KEY_MODEL), KEY_MODEL)
        prompt = expect_text(data[KEY_PROMPT], KEY_PROMPT, max_chars=config.max_text_chars, allow_empty=True)
        raw = expect_array(data[KEY_RESPONSES], KEY_RESPONSES, min_len=2, max_len=config.max_compare_responses,
                           limit_name="max_compare_responses")
        responses = tuple(expect_text(r, f"{KEY_RESPONSES}[{i}]", max_chars=config.max_text_chars, allow_empty=False)
                          for i, r in enumerate(raw))
        return cls(model, prompt, responses)


def sigmoid(x: float) -> float:
    """1 / (1 + e^-x), without overflow for large |x|."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


@dataclass(frozen=True)
class Comparison:
    """Responses to one prompt, ranked, with Bradley-Terry preference probabilities."""

    model: str
    scores: tuple[float, ...]
    ranking: tuple[int, ...]
    """Indices into the responses, best first; equal scores keep input order."""
    preferences: tuple[tuple[int, int, float], ...]
    """(i, j, P(i beats j)) for every i < j, with P = sigmoid(r_i - r_j)."""

    @classmethod
    def from_scores(cls, model: str, scores: Sequence[float]) -> Comparison:
        """Rank and compare.

        >>> c = Comparison.from_scores("m", [0.0, 2.0, 1.0])
        >>> c.ranking, round(c.preferences[0][2], 4)
        ((1, 2, 0), 0.1192)
        """
        r = tuple(scores)
        ranking = tuple(sorted(range(len(r)), key=lambda i: (-r[i], i)))
        # Bradley-Terry: P(y_i > y_j | x) = sigma(r_i - r_j)
        prefs = tuple((i, j, sigmoid(r[i] - r[j])) for i in range(len(r)) for j in range(i + 1, len(r)))
        return cls(model, r, ranking, prefs)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            KEY_MODEL: self.model,
            KEY_SCORES: list(self.scores),
            KEY_RANKING: list(self.ranking),
            KEY_PREFERENCES: [list(p) for p in self.preferences],
        }
        if len(self.scores) == 2:
            out[KEY_P_FIRST_BETTER] = self.preferences[0][2]
        return out


# ---- handlers ----

def _service(request: web.Request) -> ScoringService:
    return request.config_dict[SCORING_KEY]


async def score_handler(request: web.Request) -> web.Response:
    """POST /v1/score."""
    body = ScoreRequest.from_json(await read_json_object(request), request.config_dict[CONFIG_KEY])
    service = _service(request)
    model_id = service.registry.resolve(body.model)
    scores = await service.score(model_id, [it.prompt for it in body.items], [it.response for it in body.items])
    return json_response({KEY_MODEL: model_id, KEY_SCORES: scores})


async def compare_handler(request: web.Request) -> web.Response:
    """POST /v1/compare."""
    body = CompareRequest.from_json(await read_json_object(request), request.config_dict[CONFIG_KEY])
    service = _service(request)
    model_id = service.registry.resolve(body.model)
    scores = await service.score(model_id, [body.prompt] * len(body.responses), body.responses)
    return json_response(Comparison.from_scores(model_id, scores).to_json())


async def models_handler(request: web.Request) -> web.Response:
    """GET /v1/models."""
    registry = _service(request).registry
    models = [{KEY_ID: m, KEY_DEFAULT: m == registry.default_id, KEY_LOADED: registry.is_loaded(m)}
              for m in registry.ids]
    return json_response({KEY_MODELS: models, KEY_DEFAULT: registry.default_id})


# ---- schemas (documentation; the checks above are what enforce them) ----

def _schemas(config: ServerConfig) -> dict[str, Schema]:
    text = {"type": "string", "maxLength": config.max_text_chars}
    # what expect_text(allow_empty=False) enforces: at least one character that is not whitespace
    response = {**text, "minLength": 1, "pattern": r"\S", "description": "Not empty, not only whitespace."}
    model = {"type": ["string", "null"], "minLength": 1,
             "description": "Model id from GET /v1/models; omitted or null: the default model."}
    score = {"type": "number", "description": "Reward r(prompt, response); higher is better."}
    return {
        "score_req": Schema("ScoreRequest", {
            "type": "object", "additionalProperties": False, "required": [KEY_ITEMS],
            "properties": {
                KEY_MODEL: model,
                KEY_ITEMS: {"type": "array", "minItems": 1, "maxItems": config.max_items, "items": {
                    "type": "object", "additionalProperties": False, "required": [KEY_PROMPT, KEY_RESPONSE],
                    "properties": {KEY_PROMPT: text, KEY_RESPONSE: response},
                }},
            },
        }),
        "score_resp": Schema("ScoreResponse", {
            "type": "object", "required": [KEY_MODEL, KEY_SCORES],
            "properties": {KEY_MODEL: {"type": "string"},
                           KEY_SCORES: {"type": "array", "items": score, "description": "One per item, in order."}},
        }),
        "compare_req": Schema("CompareRequest", {
            "type": "object", "additionalProperties": False, "required": [KEY_PROMPT, KEY_RESPONSES],
            "properties": {
                KEY_MODEL: model,
                KEY_PROMPT: text,
                KEY_RESPONSES: {"type": "array", "minItems": 2, "maxItems": config.max_compare_responses,
                                "items": response},
            },
        }),
        "compare_resp": Schema("CompareResponse", {
            "type": "object", "required": [KEY_MODEL, KEY_SCORES, KEY_RANKING, KEY_PREFERENCES],
            "properties": {
                KEY_MODEL: {"type": "string"},
                KEY_SCORES: {"type": "array", "items": score},
                KEY_RANKING: {"type": "array", "items": {"type": "integer", "minimum": 0},
                              "description": "Response indices, best first; ties keep input order."},
                KEY_PREFERENCES: {
                    "type": "array",
                    "description": "[i, j, P(response i beats response j)] for every i < j; Bradley-Terry: "
                                   "P = sigmoid(r_i - r_j).",
                    "items": {"type": "array", "minItems": 3, "maxItems": 3, "prefixItems": [
                        {"type": "integer", "minimum": 0}, {"type": "integer", "minimum": 1},
                        {"type": "number", "minimum": 0, "maximum": 1}]},
                },
                KEY_P_FIRST_BETTER: {"type": "number", "minimum": 0, "maximum": 1,
                                     "description": "Only with exactly 2 responses: sigmoid(r_0 - r_1)."},
            },
        }),
        "models_resp": Schema("ModelList", {
            "type": "object", "required": [KEY_MODELS, KEY_DEFAULT],
            "properties": {
                KEY_MODELS: {"type": "array", "items": {
                    "type": "object", "required": [KEY_ID, KEY_DEFAULT, KEY_LOADED],
                    "properties": {KEY_ID: {"type": "string"}, KEY_DEFAULT: {"type": "boolean"},
                                   KEY_LOADED: {"type": "boolean", "description": "In memory now."}}}},
                KEY_DEFAULT: {"type": "string", "description": "Id used when a request names no model."},
            },
        }),
    }


def scoring_feature(registry: ScorerRegistry, config: ServerConfig) -> Feature:
    """The scoring API as a Feature: routes for role `scorer` (or admin), and the worker thread."""
    s = _schemas(config)
    # 404: unknown model; 503: a model failed to load.
    endpoints = (
        Endpoint(method="POST", path="/v1/score", handler=score_handler, role=Role.SCORER, tags=("scoring",),
                 summary="Score (prompt, response) items with a reward model", operation_id="score",
                 request=s["score_req"], response=s["score_resp"], errors=(404, 503)),
        Endpoint(method="POST", path="/v1/compare", handler=compare_handler, role=Role.SCORER, tags=("scoring",),
                 summary="Rank responses to one prompt, with Bradley-Terry preference probabilities",
                 operation_id="compare", request=s["compare_req"], response=s["compare_resp"], errors=(404, 503)),
        Endpoint(method="GET", path="/v1/models", handler=models_handler, role=Role.SCORER, tags=("scoring",),
                 summary="List the reward models this node serves", operation_id="listModels",
                 response=s["models_resp"]),
    )

    def setup(app: web.Application) -> None:
        service = ScoringService(registry, window_s=config.batch_window_s, max_batch=config.max_batch)
        app[SCORING_KEY] = service

        async def close(_: web.Application) -> None:
            await service.close()

        app.on_cleanup.append(close)

    return Feature("scoring", endpoints, setup)


def scoring_off_feature(reason: str) -> Feature:
    """The scoring routes of a server without reward models: each answers 503 with `reason` (how to turn
    scoring on) rather than the router's bare "no route"."""

    async def scoring_off(request: web.Request) -> web.Response:
        raise ServiceUnavailable(reason)

    routes = (("POST", "/v1/score", "score", "Score (prompt, response) items (off: no reward model)"),
              ("POST", "/v1/compare", "compare", "Rank responses to one prompt (off: no reward model)"),
              ("GET", "/v1/models", "listModels", "List the reward models (off: no reward model)"))
    return Feature("scoring", tuple(
        Endpoint(method=method, path=path, handler=scoring_off, role=Role.SCORER, tags=("scoring",),
                 summary=summary, operation_id=operation_id, errors=(503,))
        for method, path, operation_id, summary in routes))


__all__ = [
    "Comparison", "CompareRequest", "MicroBatcher", "SCORING_KEY", "ScoreItem", "ScoreRequest",
    "Scorer", "ScorerLoader", "ScorerRegistry", "ScoringService", "scoring_feature", "scoring_off_feature",
    "sigmoid",
]
