"""The ingestion API and labeling form under bad input: the right 4xx, in the one error shape, and nothing lost or
left behind (huge numbers, huge ids, reused idempotency keys, unknown campaigns, non-string comments)."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from storage.errors import AlreadyExistsError, NotFoundError
from storage.records import Comparison, Feedback, Rating
from storage.store import Store
from tests.node.labeling.conftest import ADMIN, CAMPAIGN, LABELER, api_keys, assert_error
from tests.node.labeling.test_api import COMPARISON, post
from tests.node.labeling.test_pages import field
from tests.storage.conftest import db_url, postgres_server  # noqa: F401 -- fixtures: SQLite and PostgreSQL

HUGE = int("1" + "0" * 400)  # too big for a float: float(HUGE) raises OverflowError
RATING = {"prompt": "p", "response": "a", "rating": 5, "scale": [1, 7]}


@pytest.mark.parametrize(("path", "body", "fragment"), [
    ("/v1/feedback", {**RATING, "rating": HUGE}, "rating is too large"),
    ("/v1/feedback", {**RATING, "scale": [1, HUGE]}, "scale[1] is too large"),
    ("/v1/feedback", {**RATING, "scale": [-HUGE, 7]}, "scale[0] is too large"),
    ("/v1/comparisons", {**COMPARISON, "confidence": HUGE}, "confidence is too large"),
])
async def test_numbers_too_big_for_a_float_are_a_422(client: TestClient, store: Store, path: str,
                                                     body: dict[str, Any], fragment: str) -> None:
    before = store.table_counts()
    status, answer = await post(client, path, body, LABELER)
    assert status == 422
    assert_error(answer, 422, fragment, "finite number")
    assert store.table_counts() == before


@pytest.mark.parametrize("pair_id", ["9" * 30, str(2**63), "-" + "9" * 30, "-1", "999999"])
async def test_out_of_range_pair_ids_are_a_404_like_unknown_ones(client: TestClient, store: Store,
                                                                 pair_id: str) -> None:
    html = await (await client.get(f"/label/{CAMPAIGN}", headers=LABELER)).text()
    resp = await client.post(f"/label/{CAMPAIGN}", headers=LABELER, data={
        "pair_id": pair_id, "left": field(html, "left"), "choice": "A"})
    assert_error(await resp.json(), 404, f"has no pair {pair_id}", "label the pair the page shows")
    assert store.campaign_labels(CAMPAIGN) == []


def test_revoking_an_out_of_range_token_id_is_not_found(store: Store) -> None:
    with pytest.raises(NotFoundError, match="no token has id"):
        store.revoke_token(10**30)


async def test_a_key_reused_for_another_record_is_a_409_and_stores_nothing(client: TestClient,
                                                                           store: Store) -> None:
    first = {**COMPARISON, "idempotency_key": "k1"}
    assert await post(client, "/v1/comparisons", first, LABELER) == (200, {"ok": True, "kind": "comparisons",
                                                                            "stored": True})
    assert await post(client, "/v1/comparisons", first, LABELER) == (200, {"ok": True, "kind": "comparisons",
                                                                            "stored": False})  # a retry
    before = store.table_counts()
    for other in ({**first, "outcome": "B"}, {**first, "prompt": "a brand-new prompt"}):
        status, answer = await post(client, "/v1/comparisons", other, LABELER)
        assert status == 409
        assert_error(answer, 409, "idempotency key 'k1' was already used for a different record", "new idempotency key")
    status, answer = await post(client, "/v1/feedback", {"prompt": "another new prompt", "response": "r",
                                                          "thumbs": "up", "idempotency_key": "k1"}, LABELER)
    assert_error(answer, 409, "'k1'")  # a key names one record, whatever its kind
    resp = await client.post("/v1/comparisons", json={**COMPARISON, "outcome": "tie"},
                             headers={**LABELER, "Idempotency-Key": "k1"})
    assert_error(await resp.json(), 409, "'k1'")  # the header is the same key
    assert store.table_counts() == before  # no orphan prompt or response of the refused records
    assert [r.outcome for r in store.iter_records(sources=["api"]) if isinstance(r, Comparison)] == ["A"]


async def test_keys_are_scoped_to_the_caller(client: TestClient, store: Store) -> None:
    mine = {**COMPARISON, "idempotency_key": "k1"}
    assert (await post(client, "/v1/comparisons", mine, LABELER))[1]["stored"] is True
    theirs = {"prompt": "admin's prompt", "response_a": "x", "response_b": "y", "outcome": "B",
              "annotator": "bob", "idempotency_key": "k1"}
    assert (await post(client, "/v1/comparisons", theirs, ADMIN))[1]["stored"] is True
    assert (await post(client, "/v1/comparisons", theirs, ADMIN))[1]["stored"] is False  # its own retry
    stored = sorted((r.prompt, r.annotator) for r in store.iter_records(sources=["api"]))
    assert stored == [("2+2?", "alice"), ("admin's prompt", "bob")]


async def test_a_key_first_sent_with_stored_content_is_bound_to_it(client: TestClient, store: Store) -> None:
    store.import_records([Comparison("api", "2+2?", "4", "5", "A", annotator="alice")])  # with no key
    first = {**COMPARISON, "idempotency_key": "k1"}
    assert await post(client, "/v1/comparisons", first, LABELER) == (200, {"ok": True, "kind": "comparisons",
                                                                            "stored": False})  # content known
    assert (await post(client, "/v1/comparisons", first, LABELER))[1]["stored"] is False  # its retry
    before = store.table_counts()
    status, answer = await post(client, "/v1/comparisons", {**first, "prompt": "a brand-new prompt"}, LABELER)
    assert_error(answer, 409, "idempotency key 'k1' was already used for a different record")
    assert store.table_counts() == before


@pytest.mark.parametrize("change", [{"confidence": 0.9}, {"comment": "on second thought"}, {"model_a": "m2"}])
async def test_the_same_key_with_another_confidence_or_comment_is_a_409(client: TestClient, store: Store,
                                                                        change: dict[str, Any]) -> None:
    first = {**COMPARISON, "confidence": 0.5, "comment": "sure", "idempotency_key": "k1"}
    assert (await post(client, "/v1/comparisons", first, LABELER))[1]["stored"] is True
    before = store.table_counts()
    status, answer = await post(client, "/v1/comparisons", {**first, **change}, LABELER)
    assert_error(answer, 409, "'k1'")
    assert store.table_counts() == before
    [stored] = store.iter_records(sources=["api"])
    assert isinstance(stored, Comparison) and (stored.confidence, stored.comment) == (0.5, "sure")
    assert (await post(client, "/v1/comparisons", first, LABELER))[1]["stored"] is False  # the very same


async def test_file_import_keys_never_block_a_callers_key(client: TestClient, store: Store) -> None:
    store.import_records([Feedback("file", "p", "r", True, idempotency_key="labeler:alice/k9")])
    status, answer = await post(client, "/v1/comparisons", {**COMPARISON, "idempotency_key": "k9"}, LABELER)
    assert (status, answer["stored"]) == (200, True)
    assert sorted(str(r.idempotency_key) for r in store.iter_records()
                  if r.source in ("file", "api")) == ["None", "labeler:alice/k9"]


async def test_the_same_content_under_a_new_key_is_stored_once(client: TestClient, store: Store) -> None:
    assert (await post(client, "/v1/feedback", {**RATING, "idempotency_key": "a"}, LABELER))[1]["stored"] is True
    assert (await post(client, "/v1/feedback", {**RATING, "idempotency_key": "b"}, LABELER))[1] == {
        "ok": True, "kind": "ratings", "stored": False}
    assert [type(r) for r in store.iter_records(sources=["api"])] == [Rating]


@pytest.mark.parametrize("path", ["/v1/comparisons", "/v1/rankings", "/v1/feedback"])
async def test_an_unknown_campaign_is_a_422_and_is_not_created(client: TestClient, store: Store, path: str) -> None:
    body = {"/v1/comparisons": COMPARISON, "/v1/rankings": {"prompt": "p", "responses": ["a", "b"]},
            "/v1/feedback": {"prompt": "p", "response": "a", "thumbs": "up"}}[path]
    before = store.table_counts()
    status, answer = await post(client, path, {**body, "campaign": "no-such-campaign"}, LABELER)
    assert status == 422
    assert_error(answer, 422, "no campaign named 'no-such-campaign'", "create it with `rewardnode campaign create`",
                 "leave 'campaign' out")
    assert store.table_counts() == before
    assert [c.name for c in store.list_campaigns()] == [CAMPAIGN]
    status, answer = await post(client, path, {**body, "campaign": CAMPAIGN}, LABELER)  # an existing one is fine
    assert (status, answer["stored"]) == (200, True)


def test_imports_still_create_the_campaigns_they_name(store: Store) -> None:
    store.import_records([Feedback("file", "p", "r", True, campaign="from-a-file")])
    assert "from-a-file" in [c.name for c in store.list_campaigns()]


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/feedback", {"prompt": "p", "response": "a", "thumbs": "up"}),
    ("/v1/feedback", RATING),
    ("/v1/comparisons", COMPARISON),
])
@pytest.mark.parametrize("comment", [0, [], False, {}, 1.5])
async def test_a_comment_that_is_not_a_string_is_a_422(client: TestClient, store: Store, path: str,
                                                       body: dict[str, Any], comment: Any) -> None:
    before = store.table_counts()
    status, answer = await post(client, path, {**body, "comment": comment}, LABELER)
    assert status == 422
    assert_error(answer, 422, "comment must be a string")
    assert store.table_counts() == before


async def test_string_comments_are_still_stored(client: TestClient, store: Store) -> None:
    await post(client, "/v1/feedback", {"prompt": "p", "response": "a", "thumbs": "up", "comment": "nice"}, LABELER)
    await post(client, "/v1/feedback", {**RATING, "comment": ""}, LABELER)  # empty: no comment
    got = sorted((type(r).__name__, getattr(r, "comment", None)) for r in store.iter_records(sources=["api"]))
    assert got == [("Feedback", "nice"), ("Rating", None)]


def test_submit_is_all_or_nothing_on_every_database(db_url: str) -> None:  # noqa: F811 -- the fixture
    s = Store.open(db_url)
    try:
        record = Comparison("api", "p", "a", "b", "A", idempotency_key="k")
        assert s.submit(record, scope="labeler:alice") is True
        assert s.submit(record, scope="labeler:alice") is False  # a retry
        before = s.table_counts()
        with pytest.raises(AlreadyExistsError, match="'k' was already used"):
            s.submit(Comparison("api", "new prompt", "x", "y", "B", idempotency_key="k"),
                            scope="labeler:alice")
        with pytest.raises(NotFoundError, match="no campaign named 'nope'"):
            s.submit(Comparison("api", "q", "x", "y", "B", campaign="nope"), scope="labeler:alice")
        assert s.table_counts() == before and s.list_campaigns() == []
        other = Comparison("api", "new prompt", "x", "y", "B", idempotency_key="k")
        assert s.submit(other, scope="admin:ops") is True  # another caller's k
        assert sorted(api_keys(s)) == ["admin:ops/k", "labeler:alice/k"]
    finally:
        s.close()


async def test_a_store_call_that_hangs_is_a_503_after_the_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """A hung database server (SIGSTOPped, partitioned) must not hang every request with it."""
    import asyncio
    import time

    from node.http import ServiceUnavailable
    from node.labeling import service as svc

    monkeypatch.setattr(svc, "STORE_CALL_TIMEOUT_S", 0.1)
    labeling = svc.LabelingService(store=None)  # type: ignore[arg-type]
    try:
        with pytest.raises(ServiceUnavailable, match="did not answer within 0.1 s"):
            await labeling.call(time.sleep, 0.5)
        with pytest.raises(ServiceUnavailable):  # queued behind the hung call: it times out as well
            await labeling.call(lambda: 7)
        await asyncio.sleep(0.6)
        assert await labeling.call(lambda: 7) == 7  # the worker is free again once the hung call returns
    finally:
        labeling.close()
