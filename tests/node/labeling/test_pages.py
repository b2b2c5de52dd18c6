"""The labeling pages and the dashboard in-process: invite -> session cookie, CSRF, sides, scope, dashboard."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from federation.manifest import GENESIS, RoundManifest, sign_manifest
from node.http import ServerConfig, create_app
from node.labeling import labeling_feature
from node.labeling.html import line_chart, none_yet
from node.labeling.service import sha256_hex
from node.p2p import PeerBook
from protocol.identity import Identity
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


def polyline_points(html: str, series: str) -> list[str]:
    match = re.search(rf"<polyline data-series='{series}'[^>]* points='([^']*)'", html)
    assert match, series
    return match.group(1).split()


async def test_dashboard_shows_curves_rounds_and_peers(aiohttp_client: Any, store: Store, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    client = await aiohttp_client(create_app(ServerConfig(), features=[labeling_feature(store, home=home)]))
    html = await (await client.get("/dashboard", headers=ADMIN)).text()
    assert "Peers: none yet" in html and "Federation rounds: none yet" in html
    # a personal model with a card holding its history, and one whose card is gone
    history = [{"step": 10 * (i + 1), "epoch": 1, "train_loss": 0.7 - 0.05 * i,
                "dev_accuracy": None if i == 0 else 0.5 + 0.04 * i} for i in range(7)]
    model_dir = tmp_path / "rm-curve"
    model_dir.mkdir()
    (model_dir / "model_card.json").write_text(json.dumps({"metrics": {"training": {"history": history}}}))
    store.register_model(name="rm-curve", kind="personal", path=str(model_dir), sha256="b" * 64, base_model="tiny",
                         snapshot_id=None, metrics={}, provenance={})
    store.register_model(name="rm-lost", kind="personal", path=str(tmp_path / "gone"), sha256="c" * 64,
                         base_model="tiny", snapshot_id=None, metrics={}, provenance={})
    # a federated model whose chain has an accepted contribution, a rejection and an unreadable manifest
    coordinator, member, bad = Identity.generate(), Identity.generate(), Identity.generate()
    manifest = RoundManifest(
        federation_id="f" * 64, round=1, strategy="fedavg", base_model_sha256="d" * 64,
        global_before_sha256="e" * 64, aggregate_sha256="a1b2c3d4e5f6" + "0" * 52, prev_manifest_sha256=GENESIS,
        contributions=({"sender": member.public_key_hex, "update_sha256": "9" * 64, "num_examples": 321,
                        "envelope": "{}"},),
        rejections=({"sender": bad.public_key_hex, "reason": "norm_too_large", "detail": "update norm 93.1 > 10"},))
    store.register_model(name="federated-demo", kind="federated", path=str(tmp_path / "fed"), sha256="d" * 64,
                         base_model="tiny", snapshot_id=None, metrics={"rounds": 2},
                         provenance={"federation": "demo",
                                     "manifests": [sign_manifest(coordinator, manifest), "not an envelope"]})
    addr = "/ip4/203.0.113.5/tcp/4001/p2p/12D3KooW" + "x" * 44
    assert PeerBook.load(home).add(addr, "org-b")
    html = await (await client.get("/dashboard", headers=ADMIN)).text()

    loss, accuracy = polyline_points(html, "train loss"), polyline_points(html, "dev accuracy")
    assert len(loss) == len(history) and len(accuracy) == len(history) - 1  # the None accuracy is left out
    assert float(loss[0].split(",")[1]) < float(loss[-1].split(",")[1])  # loss falls; SVG y grows downwards
    assert "rm-curve (bbbbbbbbbbbb): training curve" in html and "step 10" in html and "step 70" in html
    assert "rm-lost (cccccccccccc): no curve recorded" in html
    assert member.public_key_hex[:12] in html and "321" in html and "a1b2c3d4e5f6" in html
    assert f"{bad.public_key_hex[:12]}: norm_too_large (update norm 93.1 &gt; 10)" in html
    assert "unreadable manifest" in html and member.public_key_hex not in html  # fingerprints are short
    assert "org-b" in html and addr in html and "Peers: none yet" not in html
    (home / "peers.json").write_text("{broken")
    html = await (await client.get("/dashboard", headers=ADMIN)).text()
    assert "not readable JSON" in html


def test_line_chart_scales_each_series_and_marks_single_points() -> None:
    svg = line_chart("t", [("a", [(0, 1.0), (5, 3.0)]), ("b", [(2, 0.5)]), ("empty", [])])
    assert polyline_points(svg, "a") == ["8.0,162.0", "552.0,52.0"]
    assert "<circle cx='225.6' cy='107.0'" in svg
    assert "data-series='empty'" not in svg and "step 0" in svg and "step 5" in svg
    assert line_chart("t", [("a", [])]) == none_yet("t")


def test_alpha_by_source_is_listed_by_name() -> None:
    """PostgreSQL's JSONB reorders a summary's keys (shortest first): the dashboard sorts them itself."""
    from datetime import UTC, datetime
    from types import SimpleNamespace

    from node.labeling.dashboard import _agreement

    run = SimpleNamespace(id=1, created_at=datetime.now(UTC),
                          summary={"alpha": {"overall": 0.5, "by_source": {"src-z": 0.1, "src-a": 0.2, "src-mm": 0.3}}})
    html = _agreement({"run": run})
    assert html.index("src-a") < html.index("src-mm") < html.index("src-z")
