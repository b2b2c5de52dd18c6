"""HttpReward against a `rewardnode serve` app configured with limits lower than the defaults: it reads the
limits the server advertises, adapts to the ones a refusal names, halves what a silent refusal refused, and
says what to do when a single item is refused."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import pytest
from aiohttp import web

from node.errors import NodeError
from node.http import ScorerRegistry, ServerConfig, create_app
from node.http.errors import Handler
from node.rl.rewards import KEY_MAX_BODY_BYTES, KEY_MAX_ITEMS, SCORE_REQUEST_SCHEMA, HttpReward


class Recording:
    """r = len(response); records the size of every scored request."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        self.calls.append(len(responses))
        return [float(len(r)) for r in responses]


class Server:
    """The real app in-process, with every /v1/score request's status and body size recorded."""

    def __init__(self) -> None:
        self.scorer = Recording()
        self.requests: list[tuple[int, int]] = []  # (status, body bytes)

    async def start(self, aiohttp_server: Any, *, silent: bool = False, **limits: int) -> str:
        """The /v1/score URL. `silent`: like a proxy in front, hide the limits (no /openapi.json, and a 413
        whose body names no limit)."""
        app = create_app(ServerConfig(require_auth=False, **limits),
                         scorers=ScorerRegistry.from_scorers({"m": self.scorer}))

        @web.middleware
        async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
            if silent and request.path == "/openapi.json":
                raise web.HTTPNotFound()
            response = await handler(request)
            if request.path == "/v1/score":
                self.requests.append((response.status, request.content_length or 0))
            if silent and response.status == 413:
                return web.Response(status=413, text="Request Entity Too Large")
            return response

        app.middlewares.insert(0, record)  # outermost: it sees the error middleware's answers
        server = await aiohttp_server(app)
        return str(server.make_url("/v1/score"))

    @property
    def refused(self) -> list[int]:
        return [status for status, _ in self.requests if status != 200]


def _responses(n: int, chars: int) -> list[str]:
    return [f"{i} " + "z" * chars for i in range(n)]


async def test_a_server_with_a_lower_body_limit_is_sent_what_it_accepts(aiohttp_server) -> None:
    """40 items of ~500 bytes (20 KB) used to go in one request; a server taking 4 KB answered 413 and the
    run failed. The 413 names the limit: the client splits by it and keeps it for the requests after."""
    server = Server()
    reward = HttpReward(await server.start(aiohttp_server, max_body_bytes=4096), token="")
    responses = _responses(40, 500)
    scored = await asyncio.to_thread(reward.score, ["a prompt"] * 40, responses)
    assert scored.scores == [float(len(r)) for r in responses]  # all of them, in order
    assert server.refused == [413] and reward.max_body_bytes == 4096
    assert all(size <= 4096 for status, size in server.requests if status == 200)
    server.requests.clear()
    again = await asyncio.to_thread(reward.score, ["a prompt"] * 40, responses)
    assert again.scores == scored.scores and server.refused == []  # the limit is remembered
    assert sum(server.scorer.calls) == 80


async def test_a_server_that_does_not_name_its_limit_is_sent_halves(aiohttp_server) -> None:
    server = Server()
    reward = HttpReward(await server.start(aiohttp_server, silent=True, max_body_bytes=3000), token="")
    responses = _responses(64, 200)
    scored = await asyncio.to_thread(reward.score, ["p"] * 64, responses)
    assert scored.scores == [float(len(r)) for r in responses]
    refused = [size for status, size in server.requests if status == 413]  # 15 KB, then halves: 7.5, 3.7 KB
    assert len(refused) == 3 and refused[1] <= refused[0] // 2 and refused[2] <= refused[1] // 2
    assert server.requests[:3] == [(413, size) for size in refused]  # nothing is sent at a refused size again
    assert reward.max_body_bytes <= 3000
    assert all(size <= 3000 for status, size in server.requests if status == 200)


async def test_the_advertised_item_limit_holds_from_the_first_request(aiohttp_server) -> None:
    server = Server()
    reward = HttpReward(await server.start(aiohttp_server, max_items=8), token="")
    responses = _responses(30, 5)
    scored = await asyncio.to_thread(reward.score, ["p"] * 30, responses)
    assert scored.scores == [float(len(r)) for r in responses]
    assert server.refused == [] and server.scorer.calls == [8, 8, 8, 6] and reward.max_items == 8


async def test_a_422_that_names_the_item_limit_is_split_by_it(aiohttp_server) -> None:
    server = Server()
    url = await server.start(aiohttp_server, max_items=8)
    reward = HttpReward(url, token="")
    reward._asked_limits = True  # as if the OpenAPI document could not be read
    scored = await asyncio.to_thread(reward.score, ["p"] * 30, _responses(30, 5))
    assert len(scored.scores) == 30 and server.refused == [422] and reward.max_items == 8
    assert server.scorer.calls == [8, 8, 8, 6]


async def test_a_single_item_over_the_limit_says_how_to_raise_it(aiohttp_server) -> None:
    server = Server()
    reward = HttpReward(await server.start(aiohttp_server, max_body_bytes=2000), token="")
    with pytest.raises(NodeError) as info:
        await asyncio.to_thread(reward.score, ["p", "p"], ["short", "y" * 5000])
    message = str(info.value)
    size = len(json.dumps({"items": [{"prompt": "p", "response": "y" * 5000}]}))
    assert f"refuses even a single item: a request of {size:,} bytes" in message
    assert "a response of 5,000 characters) was answered 413 (its max_body_bytes is 2,000)" in message
    assert "request body is larger than the limit of 2000 bytes" in message  # the server's answer
    assert f"raise max_body_bytes to at least {size:,} in the [server] table" in message
    assert server.scorer.calls == [1]  # "short" was scored before the long one was refused


def test_the_wire_names_mirror_the_servers() -> None:
    from node.http.errors import KEY_MAX_BODY_BYTES as SERVER_KEY
    from node.http.scoring import _schemas

    assert KEY_MAX_BODY_BYTES == SERVER_KEY == "max_body_bytes" and ServerConfig(max_items=3).max_items == 3
    assert KEY_MAX_ITEMS == "max_items"  # expect_array names the limit by its ServerConfig field
    assert _schemas(ServerConfig())["score_req"].name == SCORE_REQUEST_SCHEMA
