"""POST /v1/score, POST /v1/compare, GET /v1/models with a fake scorer whose numbers are exact."""

from __future__ import annotations

import math

import pytest

from node.http.scoring import Comparison, sigmoid

from .conftest import SCORER, assert_error, fake_reward


async def test_score_returns_one_exact_score_per_item_in_order(client, scorers) -> None:
    items = [{"prompt": "ab", "response": "cdef"}, {"prompt": "", "response": "x"},
             {"prompt": "four", "response": "a longer answer"}]
    resp = await client.post("/v1/score", json={"items": items}, headers=SCORER)
    assert resp.status == 200 and resp.content_type == "application/json"
    assert await resp.json() == {"model": "rm-a", "scores": [1.5, 0.5, 6.5]}
    assert scorers["rm-a"].calls == [(["ab", "", "four"], ["cdef", "x", "a longer answer"])]
    assert scorers["rm-b"].calls == []


async def test_score_with_a_named_model(client, scorers) -> None:
    resp = await client.post("/v1/score", json={"model": "rm-b", "items": [{"prompt": "ab", "response": "cdef"}]},
                             headers=SCORER)
    assert await resp.json() == {"model": "rm-b", "scores": [101.5]}
    assert len(scorers["rm-b"].calls) == 1 and scorers["rm-a"].calls == []


async def test_null_model_means_the_default(client) -> None:
    resp = await client.post("/v1/score", json={"model": None, "items": [{"prompt": "", "response": "xy"}]},
                             headers=SCORER)
    assert await resp.json() == {"model": "rm-a", "scores": [1.0]}


async def test_unknown_model_is_404_and_lists_the_models(client, scorers) -> None:
    resp = await client.post("/v1/score", json={"model": "rm-z", "items": [{"prompt": "", "response": "x"}]},
                             headers=SCORER)
    assert resp.status == 404
    assert_error(await resp.json(), 404, "'rm-z'", "rm-a, rm-b", "/v1/models")
    resp = await client.post("/v1/compare", json={"model": "nope", "prompt": "", "responses": ["a", "b"]},
                             headers=SCORER)
    assert_error(await resp.json(), 404, "'nope'")
    assert scorers["rm-a"].calls == [] and scorers["rm-b"].calls == []


async def test_compare_three_responses(client, scorers) -> None:
    responses = ["short", "the longest one", "mid size"]
    resp = await client.post("/v1/compare", json={"prompt": "why?", "responses": responses}, headers=SCORER)
    assert resp.status == 200
    body = await resp.json()
    r = [fake_reward("why?", x) for x in responses]
    assert r == [1.5, 6.5, 3.0]
    assert body["model"] == "rm-a" and body["scores"] == r
    assert body["ranking"] == [1, 2, 0]
    assert [p[:2] for p in body["preferences"]] == [[0, 1], [0, 2], [1, 2]]
    for i, j, p in body["preferences"]:  # Bradley-Terry: P(i beats j) = sigmoid(r_i - r_j)
        assert p == pytest.approx(1 / (1 + math.exp(-(r[i] - r[j]))), rel=1e-12)
    assert body["preferences"][0][2] == pytest.approx(1 / (1 + math.exp(5.0)))
    assert "p_first_better" not in body  # only for exactly two responses
    assert scorers["rm-a"].calls == [(["why?"] * 3, responses)]  # one scorer call for all responses


async def test_compare_two_responses_gives_p_first_better(client) -> None:
    resp = await client.post("/v1/compare", json={"model": "rm-b", "prompt": "q", "responses": ["abcd", "ab"]},
                             headers=SCORER)
    body = await resp.json()
    assert body["scores"] == [101.75, 100.75]
    assert body["ranking"] == [0, 1]
    assert body["p_first_better"] == pytest.approx(1 / (1 + math.exp(-1.0)))
    assert body["preferences"] == [[0, 1, body["p_first_better"]]]


def test_comparison_ties_keep_input_order_and_extremes_do_not_overflow() -> None:
    c = Comparison.from_scores("m", [1.0, 3.0, 1.0, 3.0])
    assert c.ranking == (1, 3, 0, 2)
    assert dict(((i, j), p) for i, j, p in c.preferences)[(0, 2)] == 0.5
    assert sigmoid(-1000.0) == 0.0 and sigmoid(1000.0) == 1.0 and sigmoid(0.0) == 0.5
    for x in (-30.0, -2.5, 0.1, 7.0):
        assert sigmoid(x) + sigmoid(-x) == pytest.approx(1.0, abs=1e-15)


async def test_models_lists_ids_default_and_load_state(client) -> None:
    resp = await client.get("/v1/models", headers=SCORER)
    assert await resp.json() == {
        "models": [{"id": "rm-a", "default": True, "loaded": True}, {"id": "rm-b", "default": False, "loaded": True}],
        "default": "rm-a",
    }
