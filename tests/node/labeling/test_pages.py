"""The labeling pages and the dashboard in-process: invite -> session cookie, CSRF, sides, scope, dashboard."""

from __future__ import annotations

import re

from aiohttp.test_utils import TestClient

from node.labeling.service import sha256_hex
from storage.records import Comparison
from storage.store import Store
from tests.node.labeling.conftest import ADMIN, ADMIN_TOKEN, CAMPAIGN, LABELER, assert_error


def field(html: str, name: str) -> str:
    match = re.search(rf"name={name} value='([^']*)'", html)
    assert match, name
    return match.group(1)


async def login(client: TestClient, token: str) -> TestClient:
    page = await (await client.get("/login")).text()
    resp = await client.post("/login", data={"csrf": field(page, "csrf"), "token": token}, allow_redirects=False)
    assert resp.status == 303, await resp.text()
    cookie = resp.headers["Set-Cookie"]
    assert "rn_session=" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie
    return client


def invite(store: Store, labeler: str, secret: str = "invite-secret-0123456789", campaign: str = CAMPAIGN) -> str:
    store.add_token(sha256_hex(secret), kind="invite", role="labeler", name=labeler, campaign=campaign)
    return secret


async def test_pages_send_browsers_without_a_session_to_login(client: TestClient) -> None:
    for path in ("/label", f"/label/{CAMPAIGN}", "/dashboard"):
        resp = await client.get(path, allow_redirects=False)
        assert (resp.status, resp.headers["Location"]) == (303, "/login")
    resp = await client.post(f"/label/{CAMPAIGN}", data={"choice": "A"})
    assert_error(await resp.json(), 401, "needs authentication")


async def test_an_invite_works_once_and_labels_are_stored_with_sides(client: TestClient, store: Store) -> None:
    secret = invite(store, "bob")
    page = await (await client.get("/login")).text()
    assert "invite=" in page and 'type=password' in page  # the fragment is read by the page's script
    resp = await client.post("/login", data={"csrf": field(page, "csrf"), "token": secret}, allow_redirects=False)
    assert (resp.status, resp.headers["Location"]) == (303, f"/label/{CAMPAIGN}")
    html = await (await client.get(f"/label/{CAMPAIGN}")).text()
    for key in ("<kbd>1</kbd>", "<kbd>a</kbd>", "<kbd>t</kbd>", "<kbd>x</kbd>", "<kbd>s</kbd>"):
        assert key in html
    assert "Prefer the more helpful answer." in html
    left = field(html, "left")
    resp = await client.post(f"/label/{CAMPAIGN}", data={
        "csrf": field(html, "csrf"), "pair_id": field(html, "pair_id"), "left": left, "choice": "B",
        "confidence": "0.75", "comment": "", "better": "I would say this instead."}, allow_redirects=False)
    assert (resp.status, resp.headers["Location"]) == (303, f"/label/{CAMPAIGN}")
    rows = store.campaign_labels(CAMPAIGN)
    assert [(r.annotator, r.left_response_id, r.choice) for r in rows] == [("bob", left, "B")]
    [c] = [r for r in store.iter_records(sources=[f"labeling:{CAMPAIGN}"]) if isinstance(r, Comparison)]
    texts = store.response_texts([rows[0].left_response_id, rows[0].right_response_id])
    assert (c.response_a, c.response_b, c.outcome, c.confidence) == (
        texts[rows[0].left_response_id], texts[rows[0].right_response_id], "B", 0.75)
    # the invite is spent: a second browser cannot use it
    other = await client.get("/login")
    resp = await client.post("/login", data={"csrf": field(await other.text(), "csrf"), "token": secret})
    assert resp.status == 401 and "not valid" in await resp.text()


async def test_forms_need_the_session_csrf_token(client: TestClient, store: Store) -> None:
    await login(client, invite(store, "carol"))
    html = await (await client.get(f"/label/{CAMPAIGN}")).text()
    data = {"pair_id": field(html, "pair_id"), "left": field(html, "left"), "choice": "A"}
    for bad in ({}, {"csrf": "0" * 40}):
        resp = await client.post(f"/label/{CAMPAIGN}", data={**data, **bad})
        assert_error(await resp.json(), 403, "CSRF")
    assert store.campaign_labels(CAMPAIGN) == []
    resp = await client.post("/login", data={"token": ADMIN_TOKEN, "csrf": "forged"})
    assert resp.status == 403  # login form without its cookie


async def test_a_labeler_session_reaches_only_its_campaign(client: TestClient, store: Store) -> None:
    store.import_records([Comparison("other", "q", "x", "y", "A")])
    store.create_campaign("secret-campaign", sources=["other"])
    await login(client, invite(store, "dave"))
    assert_error(await (await client.get("/label/secret-campaign")).json(), 403, "your invite is for")
    assert_error(await (await client.get("/dashboard")).json(), 403, "needs role 'admin'")
    assert_error(await (await client.get("/v1/stats")).json(), 403, "needs role 'admin'")
    resp = await client.get("/label", allow_redirects=False)
    assert resp.headers["Location"] == f"/label/{CAMPAIGN}"


async def test_labeling_through_every_pair_ends_with_done(client: TestClient, store: Store) -> None:
    await login(client, invite(store, "erin"))
    seen = set()
    for _ in range(12):
        html = await (await client.get(f"/label/{CAMPAIGN}")).text()
        pair = field(html, "pair_id")
        assert pair not in seen
        seen.add(pair)
        await client.post(f"/label/{CAMPAIGN}", data={"csrf": field(html, "csrf"), "pair_id": pair,
                                                     "left": field(html, "left"), "choice": "skip"})
    html = await (await client.get(f"/label/{CAMPAIGN}")).text()
    assert "id=done" in html and "<strong id=mine>12</strong>" in html
    assert len(store.campaign_labels(CAMPAIGN)) == 12


async def test_bearer_labelers_can_use_the_form_without_csrf(client: TestClient, store: Store) -> None:
    html = await (await client.get(f"/label/{CAMPAIGN}", headers=LABELER)).text()
    resp = await client.post(f"/label/{CAMPAIGN}", headers=LABELER, allow_redirects=False, data={
        "pair_id": field(html, "pair_id"), "left": field(html, "left"), "choice": "tie"})
    assert resp.status == 303
    resp = await client.post(f"/label/{CAMPAIGN}", headers=LABELER, data={
        "pair_id": field(html, "pair_id"), "left": field(html, "left"), "choice": "A"})
    assert resp.status == 200  # a resubmit is stored once; the page moves on to the next pair
    assert [r.annotator for r in store.campaign_labels(CAMPAIGN)] == ["alice"]
    resp = await client.post(f"/label/{CAMPAIGN}", headers=LABELER, data={"pair_id": "x", "left": "y", "choice": "A"})
    assert_error(await resp.json(), 422, "pair_id")


async def test_dashboard_shows_sections_and_svg(client: TestClient, store: Store) -> None:
    html = await (await client.get("/dashboard", headers=ADMIN)).text()
    for text in ("Records per source", "pool", "Campaigns", "helpful", "<svg", "Aggregation runs",
                 "Models: none yet", "Training runs: none yet", "Federation rounds: none yet", "Peers: none yet"):
        assert text in html, text
    store.register_model(name="rm-1", kind="personal", path="/tmp/rm-1", sha256="a" * 64, base_model="tiny",
                         snapshot_id=None, metrics={"dev_accuracy": 0.71}, provenance={"sources": ["pool"]})
    from node.curation import aggregate_store

    aggregate_store(store)
    html = await (await client.get("/dashboard", headers=ADMIN)).text()
    assert "rm-1" in html and "dev_accuracy" in html and "Krippendorff" in html and "seed" in html
    await login(client, ADMIN_TOKEN)  # an admin api token opens a browser session on the dashboard
    assert "Dashboard" in await (await client.get("/dashboard")).text()


async def test_logout_ends_the_session(client: TestClient, store: Store) -> None:
    await login(client, invite(store, "fay"))
    html = await (await client.get(f"/label/{CAMPAIGN}")).text()
    resp = await client.post("/logout", data={"csrf": field(html, "csrf")}, allow_redirects=False)
    assert resp.status == 303
    assert (await client.get(f"/label/{CAMPAIGN}", allow_redirects=False)).status == 303
    assert store.list_tokens()[-1].revoked_at is not None
