"""A counting fake scorer with exact, hand-checkable scores, and apps built around it."""

from __future__ import annotations

import os
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from node.http import ApiToken, Role, ScorerRegistry, ServerConfig, create_app

os.environ["HF_HUB_OFFLINE"] = "1"

ADMIN_TOKEN = "admin-token-0123456789abcdef"
SCORER_TOKEN = "scorer-token-0123456789abcdef"
TOKENS = (ApiToken.from_secret(ADMIN_TOKEN, Role.ADMIN, "ops"), ApiToken.from_secret(SCORER_TOKEN, Role.SCORER, "llm"))
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
SCORER = {"Authorization": f"Bearer {SCORER_TOKEN}"}


def fake_reward(prompt: str, response: str) -> float:
    """r = len(response)/2 - len(prompt)/4: exact in binary floating point, so tests compare with ==."""
    return len(response) * 0.5 - len(prompt) * 0.25


class CountingScorer:
    """Scores with fake_reward (plus an offset per model) and records every call's inputs."""

    def __init__(self, offset: float = 0.0) -> None:
        self.offset = offset
        self.calls: list[tuple[list[str], list[str]]] = []
        self._lock = threading.Lock()

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        with self._lock:
            self.calls.append((list(prompts), list(responses)))
        return [fake_reward(p, r) + self.offset for p, r in zip(prompts, responses, strict=True)]


def make_config(**overrides: Any) -> ServerConfig:
    return ServerConfig(**{"tokens": TOKENS, **overrides})


ClientFactory = Callable[..., Awaitable[TestClient]]


@pytest.fixture
def scorers() -> dict[str, CountingScorer]:
    return {"rm-a": CountingScorer(), "rm-b": CountingScorer(offset=100.0)}


@pytest.fixture
def make_client(aiohttp_client, scorers: dict[str, CountingScorer]) -> ClientFactory:
    """make_client(**config_overrides, features=(), registry=None) -> a TestClient on a fresh app."""

    async def make(*, features: Sequence[Any] = (), registry: ScorerRegistry | None = None,
                   **overrides: Any) -> TestClient:
        registry = registry or ScorerRegistry.from_scorers(scorers, default="rm-a")
        app: web.Application = create_app(make_config(**overrides), scorers=registry, features=features)
        return await aiohttp_client(app)

    return make


@pytest.fixture
async def client(make_client: ClientFactory) -> TestClient:
    return await make_client()


LIMIT_KEYS = frozenset({"max_body_bytes", "max_items", "max_compare_responses"})
"""Extra keys of an error over a server limit: the limit, under its ServerConfig name."""


def assert_error(body: Any, status: int, *fragments: str) -> None:
    """The one error shape (plus, past a server limit, that limit), with `fragments` in the message."""
    extra = set(body) - {"ok", "error", "status"}
    assert {"ok", "error", "status"} <= set(body) and extra <= LIMIT_KEYS, body
    assert all(type(body[k]) is int and body[k] >= 1 for k in extra), body
    assert body["ok"] is False and body["status"] == status, body
    for fragment in fragments:
        assert fragment in body["error"], (fragment, body["error"])
