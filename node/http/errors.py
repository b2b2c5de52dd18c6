"""The HTTP API's one error shape, and the one middleware that produces it.

Every failure, whoever raises it (a handler, the router, aiohttp's body-size check, a bug), leaves
the server as `{"ok": false, "error": "<what is wrong and how to fix it>", "status": N}` with HTTP
status N (Datasette's shape). A request over one of the server's limits also gets that limit, under its
config name, so a client can adapt without parsing the message: `"max_body_bytes": 1048576` with 413,
`"max_items": 256` with 422. Handlers raise `HttpError` subclasses; nothing builds error bodies by
hand. Internal errors become a 500 that names a request id and leaks no traceback or secret.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from storage.errors import ConstraintError, StorageError

log = logging.getLogger("rewardnode.http")

# Wire keys of the error body.
KEY_OK = "ok"
KEY_ERROR = "error"
KEY_STATUS = "status"
KEY_MAX_BODY_BYTES = "max_body_bytes"  # ServerConfig's name for the limit, with a 413
REQUEST_ID_HEADER = "X-Request-Id"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class HttpError(Exception):
    """A failure the client can act on: `message` says what is wrong and how to fix it."""

    status = 500

    def __init__(self, message: str, *, headers: Mapping[str, str] | None = None,
                 limits: Mapping[str, int] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers: dict[str, str] = dict(headers or {})
        self.limits: dict[str, int] = dict(limits or {})  # limits it went over, by ServerConfig name


class BadRequest(HttpError):
    """400: the body is not parseable (malformed JSON, bad encoding)."""

    status = 400


class Unauthorized(HttpError):
    """401: no or wrong credentials; carries `WWW-Authenticate: Bearer`."""

    status = 401

    def __init__(self, message: str, *, invalid_token: bool = False) -> None:
        challenge = 'Bearer realm="rewardnode"' + (', error="invalid_token"' if invalid_token else "")
        super().__init__(message, headers={"WWW-Authenticate": challenge})


class Forbidden(HttpError):
    """403: valid credentials whose role may not use this route."""

    status = 403


class NotFound(HttpError):
    """404: no such route or resource (e.g. an unknown model id)."""

    status = 404


class Conflict(HttpError):
    """409: the request clashes with what is stored (e.g. an idempotency key already used for another record)."""

    status = 409


class PayloadTooLarge(HttpError):
    """413: the body is larger than `max_body_bytes`; the body of the error says that limit."""

    status = 413

    def __init__(self, message: str, max_body_bytes: int) -> None:
        super().__init__(message, limits={KEY_MAX_BODY_BYTES: max_body_bytes})


class UnsupportedMediaType(HttpError):
    """415: the body is not sent as application/json."""

    status = 415


class ValidationError(HttpError):
    """422: well-formed JSON with a wrong field; `field` is its path, e.g. `items[3].response`."""

    status = 422

    def __init__(self, field: str, problem: str, *, limits: Mapping[str, int] | None = None) -> None:
        super().__init__(f"{field} {problem}" if field else problem, limits=limits)
        self.field = field


class ServiceUnavailable(HttpError):
    """503: the server cannot serve this now (e.g. a model failed to load, or it is shutting down)."""

    status = 503


def error_body(status: int, message: str, limits: Mapping[str, int] | None = None) -> dict[str, Any]:
    """The one error shape, plus the server limits a request went over.

    >>> error_body(404, "no model 'x'")
    {'ok': False, 'error': "no model 'x'", 'status': 404}
    >>> error_body(413, "too large", {"max_body_bytes": 1000})["max_body_bytes"]
    1000
    """
    return {KEY_OK: False, KEY_ERROR: message, KEY_STATUS: status, **(limits or {})}


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None,
                   limits: Mapping[str, int] | None = None) -> web.Response:
    """A JSON response in the error shape."""
    return web.Response(
        status=status, text=json.dumps(error_body(status, message, limits)), content_type="application/json",
        headers=dict(headers or {}),
    )


# aiohttp's own HTTPException headers that must survive the conversion (Allow on 405, etc.).
_KEPT_HEADERS = ("Allow", "WWW-Authenticate", "Retry-After", "Location")


def _describe_aiohttp_error(request: web.Request, exc: web.HTTPException) -> str:
    """A fix-it message for the HTTPExceptions that aiohttp raises by itself."""
    if isinstance(exc, web.HTTPNotFound):
        return f"no route for {request.method} {request.path}; GET /openapi.json lists the routes"
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        return f"method {request.method} is not allowed on {request.path}; use {allowed}"
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return (f"request body is too large ({exc.text}); send fewer or shorter items per request, or raise "
                "max_body_bytes in the server config")
    text = exc.text or ""
    default = f"{exc.status}: {exc.reason}"
    return text if text and text != default else f"{exc.reason} ({request.method} {request.path})"


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every exception into the one JSON error shape; log 500s with a request id."""
    try:
        return await handler(request)
    except HttpError as e:
        return error_response(e.status, e.message, e.headers, e.limits)
    except web.HTTPException as e:
        if e.status < 400:  # redirects and "success" exceptions are not errors: let aiohttp send them
            raise
        kept = {k: v for k in _KEPT_HEADERS if (v := e.headers.get(k)) is not None}
        return error_response(e.status, _describe_aiohttp_error(request, e), kept)
    except StorageError as e:
        if isinstance(e, ConstraintError):  # the store refused data the code should have checked: a bug
            return _internal_error(request)
        # the database is down, locked or full (a token check in the middleware reaches it too)
        return error_response(503, f"the store could not serve the request: {e.cause}; {e.fix}")
    except Exception:  # noqa: BLE001 - the last line of defense: never leak a traceback to the client
        return _internal_error(request)


def _internal_error(request: web.Request) -> web.Response:
    """A 500 with a request id; the message and traceback go to the server log only (headers, which hold
    tokens, are never logged). Call it inside an `except` block."""
    request_id = secrets.token_hex(6)
    log.exception("internal error %s in %s %s", request_id, request.method, request.path)
    return error_response(
        500, f"internal server error (request id {request_id}); the server log has the details",
        {REQUEST_ID_HEADER: request_id},
    )
