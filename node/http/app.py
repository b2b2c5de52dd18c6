"""The node's HTTP server: the app factory, its two middlewares, and `run_server` for the CLI.

    app = create_app(ServerConfig(tokens=(ApiToken.from_secret(token),)),
                     scorers=ScorerRegistry.from_artifacts({"rm-v1": "models/rm-v1"}))
    run_server(app, "127.0.0.1", 8080)

Middlewares, outermost first: `error_middleware` (every failure -> the one JSON error shape), then
`auth_middleware` (the role each Endpoint declares; routes added outside a Feature need admin).
Features (scoring here; labeling, ingestion, dashboard later) are tables of Endpoints.
"""

from __future__ import annotations

import asyncio
import errno
import signal
import sys
from collections.abc import Sequence
from importlib import metadata
from typing import Any

from aiohttp import web
from aiohttp.web_urldispatcher import AbstractRoute

from node.errors import NodeError
from node.http.auth import Authenticator, BearerTokenAuthenticator, Role, authorize
from node.http.config import ServerConfig
from node.http.errors import KEY_OK, Handler, error_middleware
from node.http.openapi import build_openapi
from node.http.routes import (
    AUTHENTICATORS_KEY,
    CONFIG_KEY,
    ENDPOINTS_KEY,
    PRINCIPAL_KEY,
    ROUTE_ENDPOINTS_KEY,
    Endpoint,
    Feature,
    Schema,
    endpoint_of,
    json_response,
)
from node.http.scoring import ScorerRegistry, scoring_feature

OPENAPI_KEY: web.AppKey[dict[str, Any]] = web.AppKey("rewardnode.openapi")
API_DESCRIPTION = (
    "A rewardnode serves its organization's private reward model: text in, score out. Errors always have "
    'the shape {"ok": false, "error": "...", "status": N}. Send "Authorization: Bearer <token>".'
)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Check the role the matched Endpoint needs; put the caller's Principal at request[PRINCIPAL_KEY]."""
    if request.match_info.http_exception is not None:  # no route (404/405): the router's error is the answer
        return await handler(request)
    endpoint = endpoint_of(request)
    required = Role.ADMIN if endpoint is None else endpoint.role  # a route outside a Feature: admin only
    if required is not None:
        config = request.config_dict[CONFIG_KEY]
        authenticators = request.config_dict[AUTHENTICATORS_KEY]
        request[PRINCIPAL_KEY] = await authorize(request, required, authenticators, require_auth=config.require_auth)
    return await handler(request)


async def healthz_handler(request: web.Request) -> web.Response:
    """GET /healthz: the process is up and serving."""
    return json_response({KEY_OK: True})


async def openapi_handler(request: web.Request) -> web.Response:
    """GET /openapi.json."""
    return json_response(request.config_dict[OPENAPI_KEY])


def core_feature() -> Feature:
    """Routes every node serves: health check and the API description, both public."""
    health = Schema("Health", {"type": "object", "required": [KEY_OK], "properties": {KEY_OK: {"const": True}}})
    return Feature("core", (
        Endpoint(method="GET", path="/healthz", handler=healthz_handler, role=None, summary="Liveness check",
                 operation_id="healthz", response=health, tags=("meta",)),
        Endpoint(method="GET", path="/openapi.json", handler=openapi_handler, role=None,
                 summary="This OpenAPI 3.1 document", operation_id="openapi", tags=("meta",),
                 response=Schema("OpenAPIDocument", {"type": "object", "required": ["openapi", "paths"]})),
    ))


def _version() -> str:
    try:
        return metadata.version("rewardnode")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def create_app(
    config: ServerConfig,
    *,
    scorers: ScorerRegistry | None = None,
    features: Sequence[Feature] = (),
    authenticators: Sequence[Authenticator] | None = None,
) -> web.Application:
    """The aiohttp app: core routes, the scoring API when `scorers` is given, then `features` in order.

    `authenticators` replaces the default (bearer tokens from config.tokens); each feature's own
    authenticators are tried after them.
    """
    all_features = [core_feature()]
    if scorers is not None:
        all_features.append(scoring_feature(scorers, config))
    all_features += features
    auths = (BearerTokenAuthenticator(config.tokens),) if authenticators is None else tuple(authenticators)
    auths += tuple(a for f in all_features for a in f.authenticators)
    if config.require_auth and authenticators is None and not config.tokens and len(auths) == 1:
        raise ValueError("the server requires authentication but has no API tokens; add one to the server "
                         "config (ApiToken.from_secret(token) / its sha256 in node.toml), or set require_auth = "
                         "false for a node that only this machine can reach")

    app = web.Application(middlewares=[error_middleware, auth_middleware], client_max_size=config.max_body_bytes)
    app[CONFIG_KEY] = config
    app[AUTHENTICATORS_KEY] = auths
    route_endpoints: dict[AbstractRoute, Endpoint] = {}
    endpoints: list[Endpoint] = []
    declared = {(ep.method, ep.path) for feature in all_features for ep in feature.endpoints}
    for feature in all_features:
        for ep in feature.endpoints:
            resource = app.router.add_resource(ep.path, name=ep.operation_id)
            route_endpoints[resource.add_route(ep.method, ep.handler)] = ep
            if ep.method == "GET" and ("HEAD", ep.path) not in declared:  # as add_get(allow_head=True) does
                route_endpoints[resource.add_route("HEAD", ep.handler)] = ep
            endpoints.append(ep)
        if feature.setup is not None:
            feature.setup(app)
    app[ROUTE_ENDPOINTS_KEY] = route_endpoints
    app[ENDPOINTS_KEY] = tuple(endpoints)
    app[OPENAPI_KEY] = build_openapi(endpoints, title="rewardnode", version=_version(), description=API_DESCRIPTION)
    return app


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


async def serve(app: web.Application, host: str, port: int, *, shutdown_timeout: float = 10.0) -> None:
    """Serve until SIGINT or SIGTERM, then finish in-flight requests (up to shutdown_timeout s) and stop."""
    runner = web.AppRunner(app, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    try:
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                fix = "pick another port with --port, or stop the program that uses it"
            elif e.errno == errno.EACCES:
                fix = "ports below 1024 need privileges: pick a port >= 1024 with --port"
            else:
                fix = f"check --host {host}: it must be an address of this machine (127.0.0.1, 0.0.0.0, ::)"
            raise NodeError(f"cannot listen on {host}:{port} ({e.strerror or e}); {fix}") from None
        for sig in signals:
            loop.add_signal_handler(sig, stop.set)
        bound_host, bound_port = runner.addresses[0][:2]
        config = app.get(CONFIG_KEY)
        if config is not None and not config.require_auth and not config.is_loopback:
            print(f"warning: authentication is off and {host} is reachable from the network; anyone who can "
                  "connect is admin", file=sys.stderr, flush=True)
        print(f"rewardnode serving on {_url(bound_host, bound_port)} (Ctrl-C to stop)", flush=True)
        await stop.wait()
        print("rewardnode: stopping, finishing requests in flight", flush=True)
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        await runner.cleanup()


def run_server(app: web.Application, host: str, port: int, *, shutdown_timeout: float = 10.0) -> None:
    """Serve `app` on host:port until SIGINT/SIGTERM (blocking); prints the URL. For `rewardnode serve`."""
    asyncio.run(serve(app, host, port, shutdown_timeout=shutdown_timeout))
