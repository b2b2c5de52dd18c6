"""Every failure leaves the server in one shape: {"ok": false, "error": "...", "status": N}."""

from __future__ import annotations

import json

import pytest
from aiohttp import web

from node.http import Endpoint, Feature, Role, ScorerRegistry, ServiceUnavailable

from .conftest import ADMIN, SCORER, assert_error

ITEM = {"prompt": "p", "response": "r"}


@pytest.mark.parametrize(("body", "status", "fragments"), [
    ({}, 422, ["items is required"]),
    ({"items": []}, 422, ["items has 0 entries; send at least 1"]),
    ({"items": "text"}, 422, ["items must be an array; got string"]),
    ({"items": [ITEM, ITEM, ITEM, 5]}, 422, ["items[3] must be an object; got number"]),
    ({"items": [ITEM, ITEM, ITEM, {"prompt": "p", "response": ""}]}, 422,
     ["items[3].response must be a non-empty string; got an empty string"]),
    ({"items": [ITEM, {"prompt": "p", "response": None}]}, 422, ["items[1].response must be a non-empty string; got null"]),
    ({"items": [{"prompt": "p", "response": " \n "}]}, 422,
     ["items[0].response must be a non-empty string; got only whitespace"]),
    ({"items": [{"prompt": 3, "response": "r"}]}, 422, ["items[0].prompt must be a string; got number"]),
    ({"items": [{"response": "r"}]}, 422, ["items[0].prompt is required"]),
    ({"items": [{"prompt": "p", "response": "r", "score": 1}]}, 422, ["unknown field 'score' in items[0]",
                                                                     "allowed fields: prompt, response"]),
    ({"items": [ITEM], "modle": "rm-a"}, 422, ["unknown field 'modle' in the request body", "model"]),
    ({"items": [ITEM], "model": 7}, 422, ["model must be a non-empty string or omitted; got number"]),
    ({"items": [ITEM] * 9}, 422, ["items has 9 entries, more than the limit of 8", "max_items"]),
    ({"items": [{"prompt": "p" * 41, "response": "r"}]}, 422, ["items[0].prompt is 41 characters, more than the "
                                                               "limit of 40", "max_text_chars"]),
    ([ITEM], 422, ["the request body must be a JSON object; got array"]),
])
async def test_score_validation(make_client, scorers, body, status, fragments) -> None:
    client = await make_client(max_items=8, max_text_chars=40)
    resp = await client.post("/v1/score", json=body, headers=SCORER)
    assert resp.status == status
    refused = await resp.json()
    assert_error(refused, status, *fragments)
    over_limit = "more than the limit of 8" in refused["error"]
    limits = {k: v for k, v in refused.items() if k.startswith("max_")}
    assert limits == ({"max_items": 8} if over_limit else {})
    assert scorers["rm-a"].calls == []


@pytest.mark.parametrize(("body", "fragments"), [
    ({"prompt": "p", "responses": ["only one"]}, ["responses has 1 entries; send at least 2"]),
    ({"prompt": "p", "responses": ["a", 2]}, ["responses[1] must be a non-empty string; got number"]),
    ({"prompt": "p", "responses": ["a", ""]}, ["responses[1] must be a non-empty string"]),
    ({"prompt": None, "responses": ["a", "b"]}, ["prompt must be a string; got null"]),
    ({"responses": ["a", "b"]}, ["prompt is required"]),
    ({"prompt": "p", "responses": ["a"] * 5}, ["responses has 5 entries, more than the limit of 4",
                                               "max_compare_responses"]),
    ({"prompt": "p", "items": [ITEM], "responses": ["a", "b"]}, ["unknown field 'items'"]),
])
async def test_compare_validation(make_client, body, fragments) -> None:
    client = await make_client(max_compare_responses=4)
    resp = await client.post("/v1/compare", json=body, headers=SCORER)
    assert resp.status == 422
    refused = await resp.json()
    assert_error(refused, 422, *fragments)
    assert refused.get("max_compare_responses") == (4 if "more than the limit" in refused["error"] else None)


@pytest.mark.parametrize("raw", [b'{"items": [', b"", b"{'items': []}", b"\xff\xfe{}"])
async def test_malformed_json_is_400(client, raw) -> None:
    resp = await client.post("/v1/score", data=raw, headers={**SCORER, "Content-Type": "application/json"})
    assert resp.status == 400
    assert_error(await resp.json(), 400, "request body is not valid", "JSON")


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
async def test_non_json_content_type_is_415(client, content_type) -> None:
    headers = {**SCORER, **({"Content-Type": content_type} if content_type else {})}
    resp = await client.post("/v1/score", data=json.dumps({"items": [ITEM]}).encode(), headers=headers)
    assert resp.status == 415
    assert_error(await resp.json(), 415, "Content-Type must be application/json")


async def test_oversized_body_is_413_with_or_without_content_length(make_client, scorers) -> None:
    client = await make_client(max_body_bytes=1000)
    body = json.dumps({"items": [{"prompt": "p", "response": "x" * 2000}]}).encode()
    resp = await client.post("/v1/score", data=body, headers={**SCORER, "Content-Type": "application/json"})
    assert resp.status == 413
    refused = await resp.json()
    assert_error(refused, 413, "larger than the limit of 1000 bytes", "max_body_bytes")
    assert refused["max_body_bytes"] == 1000  # the limit, for a client to adapt to (HttpReward does)

    async def chunks():  # chunked transfer: no Content-Length, so the limit trips while reading
        for i in range(0, len(body), 100):
            yield body[i:i + 100]

    resp = await client.post("/v1/score", data=chunks(), headers={**SCORER, "Content-Type": "application/json"})
    assert resp.status == 413
    refused = await resp.json()
    assert_error(refused, 413, "limit of 1000 bytes")
    assert refused["max_body_bytes"] == 1000
    assert scorers["rm-a"].calls == []


async def test_aiohttp_body_limit_in_a_feature_handler_is_413_in_the_same_shape(make_client) -> None:
    async def upload(request: web.Request) -> web.Response:
        return web.json_response({"n": len(await request.read())})  # aiohttp's own client_max_size check

    feature = Feature("upload", (Endpoint(method="POST", path="/v1/upload", handler=upload, role=Role.ADMIN,
                                          summary="u", operation_id="upload"),))
    client = await make_client(features=(feature,), max_body_bytes=100)
    resp = await client.post("/v1/upload", data=b"x" * 500, headers=ADMIN)
    assert resp.status == 413
    assert_error(await resp.json(), 413, "too large", "max_body_bytes")


async def test_unknown_route_is_404_and_wrong_method_405(client) -> None:
    resp = await client.get("/v2/nothing")
    assert resp.status == 404
    assert_error(await resp.json(), 404, "no route for GET /v2/nothing", "/openapi.json")
    resp = await client.get("/v1/score", headers=SCORER)
    assert resp.status == 405 and resp.headers["Allow"] == "POST"
    assert_error(await resp.json(), 405, "method GET is not allowed on /v1/score; use POST")


class ExplodingScorer:
    def score(self, prompts, responses):
        raise RuntimeError(f"boom at /home/secret/models with token {SCORER['Authorization']}")


async def test_internal_error_is_500_without_traceback_or_secrets(make_client, caplog) -> None:
    client = await make_client(registry=ScorerRegistry.from_scorers({"bad": ExplodingScorer()}))
    resp = await client.post("/v1/score", json={"items": [ITEM]}, headers=SCORER)
    assert resp.status == 500
    text = await resp.text()
    assert "secret" not in text and "Traceback" not in text and "boom" not in text
    body = json.loads(text)
    request_id = resp.headers["X-Request-Id"]
    assert_error(body, 500, "internal server error", request_id, "server log")
    assert any(request_id in r.getMessage() for r in caplog.records)  # the details are in the server log


async def test_a_model_that_fails_to_load_is_503_and_is_retried(make_client, scorers) -> None:
    attempts = []

    def loader():
        attempts.append(1)
        if len(attempts) == 1:
            raise OSError("disk /home/secret unreadable")
        return scorers["rm-a"]

    client = await make_client(registry=ScorerRegistry({"lazy": loader}))
    resp = await client.post("/v1/score", json={"items": [ITEM]}, headers=SCORER)
    assert resp.status == 503
    body = await resp.json()
    assert_error(body, 503, "model 'lazy' could not be loaded")
    assert "secret" not in body["error"]
    resp = await client.post("/v1/score", json={"items": [{"prompt": "", "response": "ab"}]}, headers=SCORER)
    assert await resp.json() == {"model": "lazy", "scores": [1.0]}


async def test_redirects_raised_by_handlers_pass_through(make_client) -> None:
    async def old(request: web.Request) -> web.Response:
        raise web.HTTPFound("/healthz")

    async def busy(request: web.Request) -> web.Response:
        raise ServiceUnavailable("busy; retry in a minute", headers={"Retry-After": "60"})

    feature = Feature("misc", (
        Endpoint(method="GET", path="/old", handler=old, role=None, summary="o", operation_id="old"),
        Endpoint(method="GET", path="/busy", handler=busy, role=None, summary="b", operation_id="busy"),
    ))
    client = await make_client(features=(feature,))
    resp = await client.get("/old", allow_redirects=False)
    assert resp.status == 302 and resp.headers["Location"] == "/healthz"
    resp = await client.get("/busy")
    assert resp.status == 503 and resp.headers["Retry-After"] == "60"
    assert_error(await resp.json(), 503, "busy")


async def test_a_store_that_cannot_serve_is_503_and_a_constraint_error_500(make_client) -> None:
    """A database that is down fails the token check in the middleware too: 503 with the store's words."""
    from storage.errors import ConstraintError, StoreUnavailableError

    async def down(request: web.Request) -> web.Response:
        raise StoreUnavailableError("checking a token failed: the database cannot be reached (refused)",
                                    "check that the database server is running and reachable, then retry")

    async def refused(request: web.Request) -> web.Response:
        raise ConstraintError("the database refused storing: CHECK failed", "fix the input")

    feature = Feature("store", (
        Endpoint(method="GET", path="/down", handler=down, role=None, summary="d", operation_id="down"),
        Endpoint(method="GET", path="/refused", handler=refused, role=None, summary="r", operation_id="refused"),
    ))
    client = await make_client(features=(feature,))
    resp = await client.get("/down")
    assert resp.status == 503
    assert_error(await resp.json(), 503, "the store could not serve the request", "cannot be reached",
                 "database server is running")
    resp = await client.get("/refused")
    assert resp.status == 500 and "X-Request-Id" in resp.headers
    assert "CHECK" not in (await resp.text())
