"""Who is labeling: bearer tokens from the store, browser sessions (HttpOnly cookie), login and CSRF.

Secrets never reach the server in a URL: an invite link is `/login#invite=TOKEN` (a fragment is not
sent to the server, so it is never in an access log); the page's script moves it into a POST body.
A session's CSRF token is an HMAC of the session secret, so every form post is checked without
storing more state. A form posted without a session (login, or a node with `require_auth = false`,
whose callers are all admin) has no CSRF token to check: it is refused when the browser says it
comes from another site (`Sec-Fetch-Site: cross-site`, or an `Origin` other than this server).
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlsplit

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from multidict import MultiDictProxy

from node.http import BadRequest, Forbidden, Principal, Role, Unauthorized
from node.http.auth import Authenticator, BearerTokenAuthenticator, authorize
from node.http.routes import AUTHENTICATORS_KEY, CONFIG_KEY
from node.labeling.html import h, page
from node.labeling.service import (
    LOGIN_CSRF_COOKIE,
    SERVICE_KEY,
    SESSION_COOKIE,
    SESSION_DAYS,
    LabelingService,
    csrf_ok,
    new_secret,
    sha256_hex,
)
from storage.labeling import TokenInfo


@dataclass(frozen=True)
class Session:
    """The browser session a request came with."""

    secret: str
    token: TokenInfo


SESSION_KEY = web.RequestKey("rewardnode.labeling.session", Session)


class StoreBearerAuthenticator:
    """`Authorization: Bearer` tokens made by `rewardnode token create` (stored hashed), after the
    node.toml tokens of `fallback` (whose 'unknown token' answer is kept only if the store has none)."""

    def __init__(self, service: LabelingService, fallback: Authenticator | None = None) -> None:
        self.service = service
        self.fallback = fallback

    async def authenticate(self, request: web.Request) -> Principal | None:
        header = request.headers.get("Authorization")
        if header is None:
            return None
        refused: Unauthorized | None = None
        if self.fallback is not None:
            try:
                principal = await self.fallback.authenticate(request)
            except Unauthorized as e:
                refused = e
            else:
                if principal is not None:
                    return principal
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() == "bearer" and token:
            info = await self.service.call(self.service.store.find_token, sha256_hex(token), ("api",))
            if info is not None:
                return Principal(info.name, Role(info.role))
        raise refused or Unauthorized("the bearer token is not valid for this node; check the token, or ask the "
                                      "node's admin for one (`rewardnode token create`)", invalid_token=True)


class SessionAuthenticator:
    """The `rn_session` cookie of a browser that logged in; an unknown or expired one counts as absent."""

    def __init__(self, service: LabelingService) -> None:
        self.service = service

    async def authenticate(self, request: web.Request) -> Principal | None:
        secret = request.cookies.get(SESSION_COOKIE)
        if not secret:
            return None
        info = await self.service.call(self.service.store.find_token, sha256_hex(secret), ("session",))
        if info is None:
            return None
        request[SESSION_KEY] = Session(secret, info)
        return Principal(info.name, Role(info.role))


def install_authenticators(app: web.Application, ours: Sequence[Authenticator]) -> None:
    """Put the store's bearer tokens behind the node.toml ones (one Bearer check that knows both)."""
    store_bearer = next(a for a in ours if isinstance(a, StoreBearerAuthenticator))
    current = app[AUTHENTICATORS_KEY]
    bearer = [a for a in current if isinstance(a, BearerTokenAuthenticator)]
    if not bearer:
        return
    store_bearer.fallback = bearer[0]
    app[AUTHENTICATORS_KEY] = tuple(a for a in current if a is not bearer[0])


async def page_principal(request: web.Request, role: Role) -> Principal:
    """The caller of an HTML page, if it may use `role` pages; a browser without credentials is sent to /login."""
    config = request.config_dict[CONFIG_KEY]
    try:
        authenticators: Sequence[Authenticator] = request.config_dict[AUTHENTICATORS_KEY]  # type: ignore[index]
        return await authorize(request, role, authenticators,
                               require_auth=config.require_auth)
    except Unauthorized:
        if request.method == "GET" and "Authorization" not in request.headers:
            raise web.HTTPSeeOther("/login") from None
        raise


def campaign_allowed(request: web.Request, principal: Principal, campaign: str | None) -> None:
    """403 unless the caller may label `campaign`: a labeler's invite session only its own campaign.

    The one rule of the labeling pages and the ingestion API (a record naming no campaign is not
    the invite's campaign either)."""
    session = request.get(SESSION_KEY)
    scoped = session.token.campaign if session is not None else None
    if principal.role is Role.ADMIN or scoped is None or scoped == campaign:
        return
    if campaign is None:
        raise Forbidden(f"your invite is for campaign {scoped!r}; send records of that campaign only "
                        f"(\"campaign\": {scoped!r}), or ask the admin for a token")
    raise Forbidden(f"your invite is for campaign {scoped!r}, not {campaign!r}; ask the admin for an invite")


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _authority(url: str, scheme: str) -> tuple[str, int | None] | None:
    """(host, port) of "scheme://host[:port]" or "//host[:port]", the scheme's port when none is written."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname:
        return None
    return parts.hostname, port if port is not None else _DEFAULT_PORTS.get(scheme)


def check_same_site(request: web.Request) -> None:
    """403 for a form a browser posted from another site (what CSRF tokens stop when there is no session).

    Refused: `Sec-Fetch-Site: cross-site`, or (unless the browser says `same-origin`) an `Origin`
    whose host:port is neither the request's Host nor its X-Forwarded-Host (a TLS proxy may rewrite
    Host). A foreign page can set neither header; clients that are not browsers send neither."""
    fetch_site = request.headers.get("Sec-Fetch-Site", "").strip().lower()
    origin = request.headers.get("Origin")
    refused = fetch_site == "cross-site"
    if not refused and fetch_site != "same-origin" and origin is not None:
        scheme = origin.partition("://")[0].lower()
        ours = [_authority("//" + h.split(",")[0].strip(), scheme)
                for h in (request.headers.get("Host"), request.headers.get("X-Forwarded-Host")) if h]
        sent = _authority(origin, scheme)
        refused = sent is None or sent not in ours
    if refused:
        raise Forbidden(f"{request.method} {request.path} came from another site (Origin "
                        f"{origin or 'not sent'}, Sec-Fetch-Site {fetch_site or 'not sent'}) and is refused; "
                        "open the page on this server and submit the form there (behind a reverse proxy, "
                        "pass the browser's Host header on, or set X-Forwarded-Host)")


def check_csrf(request: web.Request, form: Any) -> None:
    """A form posted with a session cookie must carry that session's CSRF token; one posted without a
    session must not come from another site (403 otherwise)."""
    session = request.get(SESSION_KEY)
    if session is None:
        check_same_site(request)  # bearer (no browser sends it by itself) or no auth (everyone is admin)
        return
    sent = form.get("csrf", "")
    if not isinstance(sent, str) or not csrf_ok(session.secret, sent):
        raise Forbidden("the form's CSRF token is missing or wrong; reload the page and submit again")


async def read_form(request: web.Request) -> MultiDictProxy[Any]:
    """The posted form; 400 (the one JSON error shape) for a body that cannot be read as one."""
    try:
        return await request.post()
    except (ValueError, LookupError, HttpProcessingError) as e:  # "boundary missed", an unknown charset,
        # bytes that do not decode, a malformed part header
        raise BadRequest(f"the form body cannot be read ({type(e).__name__}: {str(e)[:200]}); post it as "
                         "application/x-www-form-urlencoded or multipart/form-data in UTF-8, as the page's "
                         "form does") from None


# ---- /login and /logout ---------------------------------------------------------------------

LOGIN_JS = """
(function(){var m=location.hash.match(/invite=([A-Za-z0-9_-]+)/);var t=document.getElementById('token');
if(m){t.value=m[1];history.replaceState(null,'',location.pathname);}
document.getElementById('go').focus();})();
"""


def _login_page(csrf: str, error: str = "", status: int = 200) -> web.Response:
    err = f"<p class=error role=alert>{h(error)}</p>" if error else ""
    body = (f"<h1>Sign in</h1>{err}<form method=post action=/login class=card>"
            f"<input type=hidden name=csrf value='{h(csrf)}'>"
            "<label>Invite or access token<br><input type=password id=token name=token size=50 "
            "autocomplete=off required></label> <button id=go type=submit>Start (Enter)</button></form>"
            "<p>Open the invite link your admin sent you, or paste a token.</p>")
    response = page("Sign in", body, status=status, script=LOGIN_JS)
    response.set_cookie(LOGIN_CSRF_COOKIE, csrf, path="/login", httponly=True, samesite="Strict")
    return response


async def login_form(request: web.Request) -> web.Response:
    """GET /login."""
    return _login_page(new_secret()[:32])


async def login_submit(request: web.Request) -> web.StreamResponse:
    """POST /login: an invite (once) or an api token becomes a browser session that ends with it."""
    service = request.config_dict[SERVICE_KEY]
    check_same_site(request)
    form = await read_form(request)
    sent, expected = str(form.get("csrf", "")), request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
        return _login_page(new_secret()[:32], "The form expired; submit it again.", status=403)
    token = str(form.get("token", "")).strip()
    secret = new_secret()
    expires = datetime.now(UTC) + timedelta(days=SESSION_DAYS)
    # an invite (used up) or an admin's or labeler's api token; the session records which (revoking it ends
    # the session), in one transaction
    info = await service.call(service.store.use_invite, sha256_hex(token), sha256_hex(secret),
                              expires) if token else None
    if info is None:
        return _login_page(new_secret()[:32], "That token is not valid (unknown, already used, revoked or "
                                              "expired); ask the node's admin for a new invite.", status=401)
    target = "/dashboard" if info.role == Role.ADMIN.value else (
        f"/label/{quote(info.campaign, safe='')}" if info.campaign else "/label")
    response = web.HTTPSeeOther(target)
    service.set_session_cookie(response, secret)
    response.del_cookie(LOGIN_CSRF_COOKIE, path="/login")
    raise response


async def logout(request: web.Request) -> web.StreamResponse:
    """POST /logout: end this browser session."""
    service = request.config_dict[SERVICE_KEY]
    await page_principal(request, Role.LABELER)
    form = await read_form(request)
    check_csrf(request, form)
    session = request.get(SESSION_KEY)
    if session is not None:
        await service.call(service.store.revoke_token, session.token.id)
    response = web.HTTPSeeOther("/login")
    response.del_cookie(SESSION_COOKIE, path="/")
    raise response
