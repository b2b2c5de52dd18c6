"""Bad client input never becomes a 500, and one bad request never fails the requests batched with it."""

from __future__ import annotations

import asyncio
import gzip
import sys
from collections.abc import Sequence

import pytest
from aiohttp import web

from node.http import Endpoint, Feature, Role, ScorerRegistry
from node.http.scoring import MicroBatcher

from .conftest import ADMIN, SCORER, CountingScorer, assert_error, fake_reward

POISON = "poison-marker"


class PoisonableScorer(CountingScorer):
    """fake_reward scores, but raises (as the tokenizer does on a lone surrogate) for any POISON text."""

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        if POISON in (*prompts, *responses):
            raise TypeError("TextEncodeInput must be Union[TextInputSequence, Tuple[InputSequence, InputSequence]]")
        return super().score(prompts, responses)


def post_raw(client, path: str, raw: str | bytes):
    return client.post(path, data=raw, headers={**SCORER, "Content-Type": "application/json"})


# ---- one bad request in a micro-batch ----

async def test_a_request_the_scorer_fails_on_does_not_fail_the_requests_batched_with_it(make_client) -> None:
    scorer = PoisonableScorer()
    items = [{"prompt": f"q{i}", "response": "r" * (i + 1)} for i in range(20)]
    bad = {"prompt": "q", "response": POISON}
    # A long window and max_batch = every item: all 21 requests land in one batch, without timing luck.
    client = await make_client(registry=ScorerRegistry.from_scorers({"rm": scorer}), batch_window_ms=30_000,
                               max_batch=21)
    reqs = [client.post("/v1/score", json={"items": [it]}, headers=SCORER) for it in items]
    reqs.insert(7, client.post("/v1/score", json={"items": [bad]}, headers=SCORER))
    responses = await asyncio.gather(*reqs)
    bad_resp = responses.pop(7)
    assert bad_resp.status == 500
    assert_error(await bad_resp.json(), 500, "internal server error")
    for it, resp in zip(items, responses, strict=True):
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["scores"] == [fake_reward(it["prompt"], it["response"])]


async def test_a_failed_batch_is_scored_request_by_request() -> None:
    batches: list[list[str]] = []

    async def score_batch(prompts: list[str], responses: list[str]) -> list[float]:
        batches.append(responses)
        if "bad" in responses:
            raise RuntimeError("scorer broke on 'bad'")
        return [float(len(r)) for r in responses]

    batcher = MicroBatcher(score_batch, window_s=0.0, max_batch=10)
    results = await asyncio.gather(batcher.score(["", ""], ["a", "bb"]), batcher.score([""], ["bad"]),
                                   batcher.score([""], ["cccc"]), return_exceptions=True)
    assert results[0] == [1.0, 2.0] and results[2] == [4.0]
    assert isinstance(results[1], RuntimeError)
    assert batches == [["a", "bb", "bad", "cccc"], ["a", "bb"], ["bad"], ["cccc"]]
    assert batcher.batches == 4
    await batcher.close()


# ---- text the tokenizer cannot take: 422 before it reaches the batch ----

@pytest.mark.parametrize(("path", "raw", "field"), [
    ("/v1/score", '{"items":[{"prompt":"p\\ud800","response":"r"}]}', "items[0].prompt"),
    ("/v1/score", '{"items":[{"prompt":"p","response":"ok \\udfff"}]}', "items[0].response"),
    ("/v1/compare", '{"prompt":"\\ud800","responses":["a","b"]}', "prompt"),
    ("/v1/compare", '{"prompt":"p","responses":["a","b\\ud83d"]}', "responses[1]"),
    ("/v1/score", '{"model":"rm-\\ud800","items":[{"prompt":"p","response":"r"}]}', "model"),
])
async def test_lone_surrogates_are_422_and_never_reach_the_scorer(make_client, scorers, path, raw, field) -> None:
    client = await make_client()
    resp = await post_raw(client, path, raw)
    assert resp.status == 422
    assert_error(await resp.json(), 422, f"{field} is not valid Unicode text (a lone surrogate", "send UTF-8")
    assert scorers["rm-a"].calls == []


async def test_surrogate_pairs_are_valid_text(make_client) -> None:
    client = await make_client()
    resp = await post_raw(client, "/v1/score", '{"items":[{"prompt":"","response":"\\ud83d\\ude00"}]}')
    assert resp.status == 200
    assert (await resp.json())["scores"] == [0.5]  # one character: U+1F600


# ---- bodies json.loads cannot parse for reasons other than syntax ----

async def test_json_nested_too_deeply_is_400(client) -> None:
    resp = await post_raw(client, "/v1/score", '{"items":' + "[" * 100_000 + "]" * 100_000 + "}")
    assert resp.status == 400
    assert_error(await resp.json(), 400, "nested too deeply")


async def test_an_integer_with_too_many_digits_is_400(client) -> None:
    resp = await post_raw(client, "/v1/score", '{"items": ' + "9" * 5000 + "}")
    assert resp.status == 400
    assert_error(await resp.json(), 400, f"integer with more than {sys.get_int_max_str_digits()} digits",
                 "fewer digits")


# ---- compressed bodies ----

@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_body_that_is_not_what_its_content_encoding_says_is_400(client, encoding) -> None:
    resp = await client.post("/v1/score", data=b'{"items": []}', headers={
        **SCORER, "Content-Type": "application/json", "Content-Encoding": encoding})
    assert resp.status == 400
    assert_error(await resp.json(), 400, "could not be read", f"valid {encoding} data")


async def test_a_valid_gzip_body_is_read(client) -> None:
    body = gzip.compress(b'{"items": [{"prompt": "q", "response": "r"}]}')
    resp = await client.post("/v1/score", data=body, headers={
        **SCORER, "Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert resp.status == 200, await resp.text()
    assert len((await resp.json())["scores"]) == 1


async def test_an_unsupported_content_encoding_is_415_in_the_error_shape(client) -> None:
    resp = await client.post("/v1/score", data=b"x", headers={
        **SCORER, "Content-Type": "application/json", "Content-Encoding": "foo"})
    assert resp.status == 415
    assert_error(await resp.json(), 415, "'foo' is not supported", "gzip or deflate")


# ---- messages and HEAD ----

async def test_an_empty_model_id_says_so(client) -> None:
    resp = await client.post("/v1/score", json={"model": "", "items": [{"prompt": "p", "response": "r"}]},
                             headers=SCORER)
    assert resp.status == 422
    assert_error(await resp.json(), 422, "model must be a non-empty string or omitted; got an empty string")


async def test_forbidden_on_an_admin_route_names_the_role_once(make_client) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    feature = Feature("ops", (Endpoint(method="POST", path="/v1/ops", handler=handler, role=Role.ADMIN,
                                       summary="o", operation_id="ops"),))
    client = await make_client(features=(feature,))
    resp = await client.post("/v1/ops", headers=SCORER)
    assert resp.status == 403
    body = await resp.json()
    assert_error(body, 403, "needs role 'admin'")
    assert "'admin' or 'admin'" not in body["error"]
    assert (await client.post("/v1/ops", headers=ADMIN)).status == 200


async def test_get_routes_answer_head_with_the_same_auth(client) -> None:
    resp = await client.head("/healthz")
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("application/json")
    assert (await client.head("/v1/models")).status == 401  # HEAD needs the GET route's role
    assert (await client.head("/v1/models", headers=SCORER)).status == 200
    resp = await client.get("/v1/score", headers=SCORER)  # a POST route still says POST only
    assert resp.status == 405 and resp.headers["Allow"] == "POST"
