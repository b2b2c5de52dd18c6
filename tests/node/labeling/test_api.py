"""The ingestion API in-process: every endpoint, auth (401/403), validation (422), 413, idempotent retries."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from storage.records import Comparison, Feedback, Ranking, Rating
from storage.store import Store
from tests.node.labeling.conftest import (
    ADMIN,
    CONFIG_ADMIN_TOKEN,
    LABELER,
    SCORER,
    ClientFactory,
    api_keys,
    assert_error,
)

COMPARISON = {"prompt": "2+2?", "response_a": "4", "response_b": "5", "outcome": "A"}


async def post(client: TestClient, path: str, body: Any, headers: dict[str, str]) -> tuple[int, Any]:
    resp = await client.post(path, json=body, headers=headers)
    return resp.status, await resp.json()


async def test_comparison_is_stored_once_per_idempotency_key(client: TestClient, store: Store) -> None:
    body = {**COMPARISON, "idempotency_key": "k1", "confidence": 0.7, "source": "app"}
    assert await post(client, "/v1/comparisons", body, LABELER) == (200, {"ok": True, "kind": "comparisons",
                                                                            "stored": True})
    # a retry is the same submit: stored once (the same key with another record is a 409: test_robustness.py)
    status, again = await post(client, "/v1/comparisons", body, LABELER)
    assert (status, again["stored"]) == (200, False)
    header_retry = [client.post("/v1/comparisons", json={**COMPARISON, "outcome": "tie"},
                                headers={**LABELER, "Idempotency-Key": "k2"}) for _ in range(5)]
    answers = [await r.json() for r in await asyncio.gather(*header_retry)]
    assert sorted(a["stored"] for a in answers) == [False, False, False, False, True]
    records = [r for r in store.iter_records(sources=["app", "api"]) if isinstance(r, Comparison)]
    assert sorted((r.outcome, r.annotator, r.idempotency_key) for r in records) == [
        ("A", "alice", None), ("tie", "alice", None)]  # the API's keys are kept apart from the records
    assert sorted(api_keys(store)) == ["labeler:alice/k1", "labeler:alice/k2"]  # and belong to the caller


async def test_ranking_and_feedback_and_rating(client: TestClient, store: Store) -> None:
    ranking = {"prompt": "pick", "responses": ["x", "y", "z"], "annotator": "bob"}
    assert (await post(client, "/v1/rankings", ranking, ADMIN))[1]["stored"] is True
    thumbs = {"prompt": "hi", "response": "hello", "thumbs": "down", "model": "m1", "comment": "rude"}
    assert (await post(client, "/v1/feedback", thumbs, LABELER))[1] == {"ok": True, "kind": "feedback",
                                                                         "stored": True}
    rating = {"prompt": "hi", "response": "hello", "rating": 6, "scale": [1, 7], "idempotency_key": "r1"}
    assert (await post(client, "/v1/feedback", rating, LABELER))[1] == {"ok": True, "kind": "ratings",
                                                                         "stored": True}
    assert (await post(client, "/v1/feedback", rating, LABELER))[1]["stored"] is False
    records = list(store.iter_records(sources=["api"]))
    assert [type(r) for r in records] == [Ranking, Rating, Feedback]
    rk, rt, fb = records
    assert isinstance(rk, Ranking) and rk.responses == ("x", "y", "z") and rk.annotator == "bob"
    assert isinstance(rt, Rating) and (rt.value, rt.scale_min, rt.scale_max, rt.annotator) == (6, 1, 7, "alice")
    assert isinstance(fb, Feedback) and (fb.thumbs_up, fb.model, fb.comment) == (False, "m1", "rude")


async def test_stats_counts_sources_and_campaigns(client: TestClient) -> None:
    await post(client, "/v1/comparisons", COMPARISON, ADMIN)
    resp = await client.get("/v1/stats", headers=ADMIN)
    body = await resp.json()
    assert resp.status == 200
    assert body["sources"]["api"]["comparisons"] == 1 and body["sources"]["pool"]["comparisons"] == 8
    assert body["totals"]["comparisons"] == 9
    # the same prompt and responses under a second source: its counts show there, the totals count them once
    await post(client, "/v1/comparisons", {**COMPARISON, "source": "other", "annotator": "carol"}, ADMIN)
    again = await (await client.get("/v1/stats", headers=ADMIN)).json()
    assert again["sources"]["other"]["prompts"] == again["sources"]["api"]["prompts"] == 1
    assert again["totals"]["comparisons"] == 10
    for what in ("prompts", "responses"):
        assert again["totals"][what] == body["totals"][what] == sum(s[what] for s in body["sources"].values())
    assert again["totals"]["annotators"] == body["totals"]["annotators"] + 1  # carol
    assert body["campaigns"] == [{"name": "helpful", "overlap": 1, "pairs": 12, "labels": 0, "complete": 0,
                                  "labelers": 0}]


@pytest.mark.parametrize(("headers", "status", "fragment"), [
    ({}, 401, "needs authentication"),
    ({"Authorization": "Bearer wrong-token-0123456789"}, 401, "not valid"),
    ({"Authorization": "Basic abc"}, 401, "Bearer"),
    (SCORER, 403, "needs role 'labeler'"),
])
async def test_posting_needs_a_labeler_or_admin(client: TestClient, headers: dict[str, str], status: int,
                                                fragment: str) -> None:
    resp = await client.post("/v1/comparisons", json=COMPARISON, headers=headers)
    assert_error(await resp.json(), status, fragment)
    if status == 401:
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")


async def test_labelers_get_403_outside_labeling(client: TestClient) -> None:
    for path in ("/v1/stats", "/dashboard"):
        resp = await client.get(path, headers=LABELER)
        assert_error(await resp.json(), 403, "needs role 'admin'")
    config_admin = {"Authorization": f"Bearer {CONFIG_ADMIN_TOKEN}"}  # node.toml tokens still work
    assert (await client.get("/v1/stats", headers=config_admin)).status == 200


@pytest.mark.parametrize(("path", "body", "fragment"), [
    ("/v1/comparisons", {**COMPARISON, "outcome": "C"}, "outcome must be one of"),
    ("/v1/comparisons", {**COMPARISON, "response_b": "4"}, "must differ"),
    ("/v1/comparisons", {**COMPARISON, "confidence": 2}, "confidence"),
    ("/v1/comparisons", {**COMPARISON, "prompt": ""}, "prompt must be a non-empty string"),
    ("/v1/comparisons", {**COMPARISON, "prompt": " \n\t"}, "prompt must be a non-empty string; got only"),
    ("/v1/comparisons", {**COMPARISON, "response_b": "  "}, "response_b must be a non-empty string; got"),
    ("/v1/rankings", {"prompt": "p", "responses": ["a", "\u3000"]}, "responses[1] must be a non-empty"),
    ("/v1/feedback", {"prompt": "p", "response": "\n", "thumbs": "up"}, "response must be a non-empty"),
    ("/v1/comparisons", {**COMPARISON, "extra": 1}, "unknown field 'extra'"),
    ("/v1/comparisons", {"prompt": "x"}, "response_a is required"),
    ("/v1/comparisons", {**COMPARISON, "annotator": "mallory"}, "labels as its own holder"),
    ("/v1/comparisons", {**COMPARISON, "prompt": "x" * 20_001}, "more than the limit"),
    ("/v1/comparisons", [COMPARISON], "must be a JSON object"),
    ("/v1/comparisons", {**COMPARISON, "source": "app\nx"}, "source is not a valid source name"),
    ("/v1/rankings", {"prompt": "p", "responses": ["a", "a"]}, "must all differ"),
    ("/v1/rankings", {"prompt": "p", "responses": ["a"]}, "responses must be an array"),
    ("/v1/feedback", {"prompt": "p", "response": "r"}, "exactly one of"),
    ("/v1/feedback", {"prompt": "p", "response": "r", "thumbs": "sideways"}, "thumbs"),
    ("/v1/feedback", {"prompt": "p", "response": "r", "rating": 9, "scale": [1, 7]}, "not on the scale"),
    ("/v1/feedback", {"prompt": "p", "response": "r", "rating": 3}, "scale must be"),
])
async def test_validation_errors_are_422(client: TestClient, path: str, body: Any, fragment: str) -> None:
    status, answer = await post(client, path, body, LABELER)
    assert status == 422
    assert_error(answer, 422, fragment)


@pytest.mark.parametrize("annotator", ["ann1\n  forged report line", "   ", "tab\there"])
async def test_an_admin_names_annotators_by_the_name_rule(client: TestClient, annotator: str) -> None:
    status, answer = await post(client, "/v1/comparisons", {**COMPARISON, "annotator": annotator}, ADMIN)
    assert status == 422
    assert_error(answer, 422, "annotator is not a valid annotator name")


async def test_idempotency_header_and_body_must_agree(client: TestClient) -> None:
    resp = await client.post("/v1/comparisons", json={**COMPARISON, "idempotency_key": "a"},
                             headers={**LABELER, "Idempotency-Key": "b"})
    assert_error(await resp.json(), 422, "differs from the Idempotency-Key header")


async def test_oversized_and_malformed_bodies(make_client: ClientFactory) -> None:
    client = await make_client(max_body_bytes=1000)
    resp = await client.post("/v1/comparisons", json={**COMPARISON, "prompt": "x" * 5000}, headers=LABELER)
    assert_error(await resp.json(), 413, "larger than the limit")
    resp = await client.post("/v1/comparisons", data=b"{not json", headers={**LABELER,
                                                                             "Content-Type": "application/json"})
    assert_error(await resp.json(), 400, "not valid JSON")
    resp = await client.post("/v1/comparisons", data=b"prompt=x", headers={**LABELER, "Content-Type": "text/plain"})
    assert_error(await resp.json(), 415, "application/json")


async def test_openapi_documents_the_ingestion_api(client: TestClient) -> None:
    doc = await (await client.get("/openapi.json")).json()
    for path in ("/v1/comparisons", "/v1/rankings", "/v1/feedback"):
        op = doc["paths"][path]["post"]
        assert op["x-required-role"] == "labeler"
        assert {"401", "403", "413", "422"} <= set(op["responses"])
        assert op["requestBody"]["content"]["application/json"]["schema"]["$ref"].startswith("#/components")
        [header] = [p for p in op["parameters"] if p["in"] == "header"]
        assert (header["name"], header["required"]) == ("Idempotency-Key", False)
        assert header["schema"] == {"type": "string", "minLength": 1, "maxLength": 200}
        assert "409" in op["responses"] and "409" in header["description"]
    assert doc["paths"]["/v1/stats"]["get"]["x-required-role"] == "admin"
    assert "parameters" not in doc["paths"]["/v1/stats"]["get"]
    assert {"ComparisonIn", "RankingIn", "FeedbackIn", "Stored", "LabelStats"} <= set(doc["components"]["schemas"])
    assert not any(p.startswith(("/label", "/login", "/dashboard")) for p in doc["paths"])
