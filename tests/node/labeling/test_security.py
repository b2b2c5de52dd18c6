"""Credentials and forms under attack: revoked tokens end their sessions, an invite reaches only its
campaign (pages and API), the labeling source cannot be forged, cross-site forms are refused without a
session, and unreadable form bodies are a 400, not a 500."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from node.app import Node
from node.config import render_config
from node.errors import NodeError
from node.http import ServerConfig, create_app
from node.labeling import labeling_features
from node.labeling.service import sha256_hex
from storage.records import Comparison
from storage.store import Store
from tests.node.labeling.conftest import ADMIN, CAMPAIGN, LABELER, LABELER_TOKEN, ClientFactory, assert_error
from tests.node.labeling.test_api import COMPARISON, post
from tests.node.labeling.test_pages import field, invite, login


def token_id(store: Store, name: str, kind: str) -> int:
    return next(t.id for t in store.list_tokens() if (t.name, t.kind) == (name, kind))


async def signed_in(client: TestClient) -> bool:
    resp = await client.get("/label", allow_redirects=False)
    return resp.status == 200 or resp.headers.get("Location") != "/login"


async def test_revoking_an_api_token_or_invite_ends_its_browser_sessions(make_client: ClientFactory,
                                                                         store: Store) -> None:
    by_token, by_invite, other = await make_client(), await make_client(), await make_client()
    await login(by_token, LABELER_TOKEN)
    await login(by_invite, invite(store, "bob"))
    await login(other, invite(store, "carol", secret="another-invite-0123456789"))
    assert [await signed_in(c) for c in (by_token, by_invite, other)] == [True, True, True]
    store.revoke_token(token_id(store, "alice", "api"))  # `rewardnode token revoke ID`
    assert [await signed_in(c) for c in (by_token, by_invite, other)] == [False, True, True]
    store.revoke_token(token_id(store, "bob", "invite"))  # an invite, already used up, still ends its session
    assert [await signed_in(c) for c in (by_token, by_invite, other)] == [False, False, True]
    resp = await by_token.post("/v1/comparisons", json=COMPARISON)  # nor does the session reach the API
    assert_error(await resp.json(), 401, "needs authentication")


async def test_an_invite_session_posts_records_of_its_campaign_only(client: TestClient, store: Store) -> None:
    store.import_records([Comparison("other", "q", "x", "y", "A")])
    store.create_campaign("other-campaign", sources=["other"])
    await login(client, invite(store, "dave"))
    before = store.table_counts()
    for body in ({**COMPARISON, "campaign": "other-campaign"}, COMPARISON):
        resp = await client.post("/v1/comparisons", json=body)
        assert_error(await resp.json(), 403, f"your invite is for campaign {CAMPAIGN!r}")
    resp = await client.post("/v1/feedback", json={"prompt": "p", "response": "r", "thumbs": "up",
                                                   "campaign": "other-campaign"})
    assert_error(await resp.json(), 403, "not 'other-campaign'")
    assert store.table_counts() == before
    status, answer = await post(client, "/v1/comparisons", {**COMPARISON, "campaign": CAMPAIGN}, {})
    assert (status, answer["stored"]) == (200, True)
    # token holders and admins are not scoped to a campaign
    elsewhere = {**COMPARISON, "outcome": "B", "campaign": "other-campaign"}
    assert (await post(client, "/v1/comparisons", elsewhere, LABELER))[0] == 200


@pytest.mark.parametrize("source", ["labeling:helpful", "labeling:", "labeling:another"])
async def test_the_labeling_source_is_reserved_for_the_pages(client: TestClient, store: Store,
                                                             source: str) -> None:
    before = store.table_counts()
    for headers in (LABELER, ADMIN):
        status, answer = await post(client, "/v1/comparisons", {**COMPARISON, "source": source,
                                                                "campaign": CAMPAIGN}, headers)
        assert status == 422
        assert_error(answer, 422, "source ", "reserved for labels made on the labeling pages")
    assert store.table_counts() == before
    status, _ = await post(client, "/v1/comparisons", {**COMPARISON, "source": "labelling-app"}, LABELER)
    assert status == 200


CROSS_SITE = [{"Sec-Fetch-Site": "cross-site"}, {"Origin": "http://evil.example"},
              {"Origin": "null"}, {"Origin": "http://127.0.0.1:1"}]


@pytest.mark.parametrize("headers", CROSS_SITE)
async def test_without_auth_a_cross_site_form_is_refused(make_client: ClientFactory, store: Store,
                                                         headers: dict[str, str]) -> None:
    client = await make_client(require_auth=False)  # every caller is admin: no session, no CSRF token
    html = await (await client.get(f"/label/{CAMPAIGN}")).text()
    form = {"pair_id": field(html, "pair_id"), "left": field(html, "left"), "choice": "A"}
    for path, data in ((f"/label/{CAMPAIGN}", form), ("/logout", {}), ("/login", {"token": LABELER_TOKEN})):
        resp = await client.post(path, data=data, headers=headers, allow_redirects=False)
        assert_error(await resp.json(), 403, "came from another site", "open the page on this server")
    assert store.campaign_labels(CAMPAIGN) == []
    assert [t.kind for t in store.list_tokens()] == ["api", "api", "api"]  # no session was made


async def test_without_auth_a_same_site_form_still_works(make_client: ClientFactory, store: Store) -> None:
    client = await make_client(require_auth=False)
    host = f"{client.host}:{client.port}"
    for headers in ({}, {"Origin": f"http://{host}"},
                    {"Sec-Fetch-Site": "same-origin", "Origin": f"http://{host}"},
                    {"Sec-Fetch-Site": "same-origin", "Origin": "https://labels.example.org"},  # a proxy
                    {"Origin": "https://labels.example.org", "X-Forwarded-Host": "labels.example.org"}):
        html = await (await client.get(f"/label/{CAMPAIGN}")).text()
        resp = await client.post(f"/label/{CAMPAIGN}", headers=headers, allow_redirects=False, data={
            "pair_id": field(html, "pair_id"), "left": field(html, "left"), "choice": "B"})
        assert resp.status == 303, await resp.text()
    assert len(store.campaign_labels(CAMPAIGN)) == 5


MALFORMED = [
    ({"Content-Type": "multipart/form-data"}, b"x"),  # "boundary missed"
    ({"Content-Type": "multipart/form-data; boundary=zz"}, b"x"),  # no starting boundary
    ({"Content-Type": "multipart/form-data; boundary=zz"}, b"--zz\r\nbroken header\r\n\r\nv\r\n--zz--\r\n"),
    ({"Content-Type": "multipart/form-data; boundary=zz"}, b"--zz\r\nContent-Disposition: form-data\r\n\r\n"),
    ({"Content-Type": "application/x-www-form-urlencoded; charset=no-such-charset"}, b"a=b"),
    ({"Content-Type": "application/x-www-form-urlencoded"}, b"choice=\xff\xfe"),  # not UTF-8
]


@pytest.mark.parametrize(("headers", "body"), MALFORMED)
async def test_an_unreadable_form_is_a_400_and_no_traceback(client: TestClient, store: Store,
                                                            caplog: pytest.LogCaptureFixture,
                                                            headers: dict[str, str], body: bytes) -> None:
    for path, extra in (("/login", {}), (f"/label/{CAMPAIGN}", LABELER), ("/logout", LABELER)):
        with caplog.at_level(logging.ERROR, logger="rewardnode"):
            resp = await client.post(path, data=body, headers={**headers, **extra})
        assert_error(await resp.json(), 400, "the form body cannot be read", "as the page's form does")
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert store.campaign_labels(CAMPAIGN) == []


async def test_secure_cookies_come_from_node_toml(aiohttp_client: Any, tmp_path: Path) -> None:
    home = tmp_path / "node"
    home.mkdir()
    toml = render_config("org", None, encrypted=False) + "\n[server]\nport = 0\nsecure_cookies = true\n"
    (home / "node.toml").write_text(toml)
    with Node.open(home) as node:
        assert node.config.secure_cookies and "secure_cookies" not in node.config.table("server")
        node.store.add_token(sha256_hex(LABELER_TOKEN), kind="api", role="labeler", name="alice")
        client = await aiohttp_client(create_app(ServerConfig.from_toml(node.config.table("server")),
                                                 features=labeling_features(node)))
        page = await (await client.get("/login")).text()
        resp = await client.post("/login", data={"csrf": field(page, "csrf"), "token": LABELER_TOKEN},
                                 allow_redirects=False)
        assert resp.status == 303 and "rn_session=" in resp.headers["Set-Cookie"]
        assert "Secure" in resp.headers["Set-Cookie"]
        await client.close()
    (home / "node.toml").write_text(toml.replace("secure_cookies = true", 'secure_cookies = "yes"'))
    with pytest.raises(NodeError, match="server.secure_cookies must be true or false"):
        Node.open(home)
