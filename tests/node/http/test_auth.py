"""Bearer tokens, roles per endpoint, public routes, and authenticators added by later features."""

from __future__ import annotations

import pytest
from aiohttp import web

from node.http import (
    PRINCIPAL_KEY,
    ApiToken,
    Endpoint,
    Feature,
    Principal,
    Role,
    ScorerRegistry,
    ServerConfig,
    Unauthorized,
    create_app,
    hash_token,
)

from .conftest import ADMIN, ADMIN_TOKEN, SCORER, assert_error

BODY = {"items": [{"prompt": "", "response": "ab"}]}


@pytest.mark.parametrize(("headers", "fragment", "invalid"), [
    ({}, "needs authentication", False),
    ({"Authorization": "Bearer wrong-token-0123456789"}, "not valid for this node", True),
    ({"Authorization": f"Bearer {ADMIN_TOKEN}x"}, "not valid for this node", True),
    ({"Authorization": f"Basic {ADMIN_TOKEN}"}, "'Bearer <token>'", True),
    ({"Authorization": "Bearer "}, "'Bearer <token>'", True),
])
async def test_missing_or_bad_token_is_401_with_a_bearer_challenge(client, scorers, headers, fragment, invalid) -> None:
    resp = await client.post("/v1/score", json=BODY, headers=headers)
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert ('error="invalid_token"' in resp.headers["WWW-Authenticate"]) is invalid
    body = await resp.json()
    assert_error(body, 401, fragment)
    assert ADMIN_TOKEN not in body["error"]  # never echoed
    assert scorers["rm-a"].calls == []


async def test_right_tokens_are_200(client) -> None:
    for headers in (ADMIN, SCORER, {"Authorization": f"bearer {ADMIN_TOKEN}"}):
        resp = await client.post("/v1/score", json=BODY, headers=headers)
        assert resp.status == 200, await resp.text()
        assert await resp.json() == {"model": "rm-a", "scores": [1.0]}


async def test_public_routes_need_no_token(client) -> None:
    resp = await client.get("/healthz")
    assert resp.status == 200 and await resp.json() == {"ok": True}
    resp = await client.get("/openapi.json")
    assert resp.status == 200 and (await resp.json())["openapi"] == "3.1.0"
    resp = await client.get("/healthz", headers={"Authorization": "Bearer whatever"})  # ignored on public routes
    assert resp.status == 200


class LabelerSessions:
    """A stand-in for the labeling app's cookie sessions."""

    async def authenticate(self, request: web.Request) -> Principal | None:
        session = request.cookies.get("session")
        if session is None:
            return None
        if session != "alice-session":
            raise Unauthorized("the session expired; log in again")
        return Principal("alice", Role.LABELER)


async def whoami(request: web.Request) -> web.Response:
    principal = request[PRINCIPAL_KEY]
    return web.json_response({"name": principal.name, "role": principal.role.value})


LABELING = Feature(
    "labeling",
    (Endpoint(method="GET", path="/v1/tasks", handler=whoami, role=Role.LABELER, summary="next tasks",
              operation_id="tasks"),
     Endpoint(method="POST", path="/v1/admin/reload", handler=whoami, role=Role.ADMIN, summary="reload",
              operation_id="reload")),
    authenticators=(LabelerSessions(),),
)


async def test_roles_per_endpoint_and_a_feature_authenticator(make_client) -> None:
    client = await make_client(features=(LABELING,))
    labeler = {"Cookie": "session=alice-session"}

    resp = await client.get("/v1/tasks", headers=labeler)
    assert await resp.json() == {"name": "alice", "role": "labeler"}
    resp = await client.get("/v1/tasks", headers=ADMIN)  # admin may do everything
    assert await resp.json() == {"name": "ops", "role": "admin"}
    resp = await client.get("/v1/tasks", headers={"Cookie": "session=stale"})
    assert resp.status == 401
    assert_error(await resp.json(), 401, "log in again")

    resp = await client.get("/v1/tasks", headers=SCORER)  # a scoring token is not a labeler
    assert resp.status == 403
    assert_error(await resp.json(), 403, "'llm' has role 'scorer'", "needs role 'labeler'")
    resp = await client.post("/v1/score", json=BODY, headers=labeler)
    assert_error(await resp.json(), 403, "needs role 'scorer'")
    resp = await client.post("/v1/admin/reload", headers=SCORER)
    assert_error(await resp.json(), 403, "needs role 'admin'")
    resp = await client.post("/v1/admin/reload", headers=ADMIN)
    assert resp.status == 200


async def test_routes_added_outside_a_feature_are_admin_only(aiohttp_client, scorers) -> None:
    from .conftest import make_config

    app = create_app(make_config(), scorers=ScorerRegistry.from_scorers(scorers))
    async def raw(request: web.Request) -> web.Response:
        return web.json_response({"raw": True})

    app.router.add_get("/raw", raw)
    client = await aiohttp_client(app)
    assert (await client.get("/raw")).status == 401
    assert (await client.get("/raw", headers=SCORER)).status == 403
    assert (await client.get("/raw", headers=ADMIN)).status == 200


async def test_auth_off_makes_every_caller_an_anonymous_admin(aiohttp_client, scorers) -> None:
    app = create_app(ServerConfig(require_auth=False), scorers=ScorerRegistry.from_scorers(scorers),
                     features=(LABELING,))
    client = await aiohttp_client(app)
    resp = await client.post("/v1/admin/reload")
    assert await resp.json() == {"name": "anonymous", "role": "admin"}


def test_auth_on_without_tokens_is_refused_at_startup(scorers) -> None:
    with pytest.raises(ValueError, match="no API tokens"):
        create_app(ServerConfig(), scorers=ScorerRegistry.from_scorers(scorers))


def test_tokens_are_stored_as_hashes_only() -> None:
    token = ApiToken.from_secret("s" * 32, Role.SCORER, "llm")
    assert token.sha256 == hash_token("s" * 32) and "s" * 32 not in repr(token)
    with pytest.raises(ValueError, match="64 lowercase hex"):
        ApiToken("s" * 32)
    with pytest.raises(ValueError, match="at least 16"):
        ApiToken.from_secret("short")
    assert ApiToken(hash_token("x" * 16), "labeler").role is Role.LABELER  # from node.toml strings


def test_server_config_from_toml() -> None:
    import tomllib

    table = tomllib.loads(f"""
port = 9000
batch_window_ms = 2
[[tokens]]
sha256 = "{hash_token("v" * 20)}"
role = "scorer"
name = "vllm"
""")
    config = ServerConfig.from_toml(table)
    assert config.port == 9000 and config.batch_window_s == 0.002 and config.host == "127.0.0.1"
    assert config.tokens == (ApiToken(hash_token("v" * 20), Role.SCORER, "vllm"),)
    with pytest.raises(ValueError, match="unknown key 'prot'"):
        ServerConfig.from_toml({"prot": 1})
    with pytest.raises(ValueError, match="require_auth = 'no' must be a bool"):
        ServerConfig.from_toml({"require_auth": "no"})
    with pytest.raises(ValueError, match="max_items = True must be a int"):
        ServerConfig.from_toml({"max_items": True})
    with pytest.raises(ValueError, match="roles: admin, scorer, labeler"):
        ServerConfig.from_toml({"tokens": [{"sha256": hash_token("v" * 20), "role": "root"}]})
    with pytest.raises(ValueError, match="port 70000"):
        ServerConfig.from_toml({"port": 70000})
