"""How a feature plugs into the server: endpoints with their role and JSON schemas, and body reading.

A feature (scoring now; labeling, ingestion, dashboard later) is a `Feature`: a tuple of `Endpoint`s
plus an optional `setup(app)` hook (app keys, startup/cleanup) and optional authenticators. Every
endpoint states the role it needs, so the auth middleware and /openapi.json come from one table.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.web_urldispatcher import AbstractRoute

from node.http.auth import Authenticator, Principal, Role
from node.http.config import ServerConfig
from node.http.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType, ValidationError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CONFIG_KEY = web.AppKey("rewardnode.config", ServerConfig)
ENDPOINTS_KEY: web.AppKey[tuple[Endpoint, ...]] = web.AppKey("rewardnode.endpoints")  # in registration order
ROUTE_ENDPOINTS_KEY: web.AppKey[dict[AbstractRoute, Endpoint]] = web.AppKey("rewardnode.route_endpoints")
AUTHENTICATORS_KEY: web.AppKey[tuple[Authenticator, ...]] = web.AppKey("rewardnode.authenticators")
PRINCIPAL_KEY = web.RequestKey("rewardnode.principal", Principal)
"""The authenticated caller, set by the auth middleware on every non-public route."""
JSON_CONTENT_TYPE = "application/json"


@dataclass(frozen=True)
class Schema:
    """A named JSON Schema (2020-12, as OpenAPI 3.1 uses) under #/components/schemas/<name>."""

    name: str
    body: Mapping[str, Any]

    @property
    def ref(self) -> dict[str, str]:
        """A $ref to this schema."""
        return {"$ref": f"#/components/schemas/{self.name}"}


@dataclass(frozen=True, kw_only=True)
class Endpoint:
    """One route: handler, the role it needs, and what /openapi.json says about it."""

    method: str
    """HTTP method, upper case."""
    path: str
    """aiohttp path; `{name}` segments become OpenAPI path parameters."""
    handler: Handler
    role: Role | None
    """The role a caller needs; None makes the route public (no credentials asked)."""
    summary: str
    """One line for the OpenAPI document."""
    operation_id: str
    request: Schema | None = None
    """JSON body schema; None when the route takes no body."""
    response: Schema | None = None
    """Schema of the 200 JSON answer; None for non-JSON answers (HTML pages)."""
    errors: tuple[int, ...] = ()
    """Statuses besides the automatic ones (401/403 for non-public routes, 400/413/415/422 with a body)."""
    tags: tuple[str, ...] = ()
    parameters: tuple[dict[str, Any], ...] = ()
    """OpenAPI parameter objects besides the path's (e.g. a request header the route reads)."""
    in_openapi: bool = True
    """False for routes that are not API (HTML pages, static files)."""

    def __post_init__(self) -> None:
        if self.method != self.method.upper():
            raise ValueError(f"endpoint {self.path}: method {self.method!r} must be upper case")
        if not self.path.startswith("/"):
            raise ValueError(f"endpoint path {self.path!r} must start with '/'")


@dataclass(frozen=True)
class Feature:
    """A group of endpoints the app mounts together, with its own setup and authenticators."""

    name: str
    endpoints: tuple[Endpoint, ...]
    setup: Callable[[web.Application], None] | None = None
    """Called once by create_app: store app keys, append to app.cleanup_ctx, etc."""
    authenticators: tuple[Authenticator, ...] = field(default=())
    """Tried after the bearer-token one, e.g. the labeling app's session cookies."""


def endpoint_of(request: web.Request) -> Endpoint | None:
    """The Endpoint the request was routed to (None for unrouted requests and foreign routes)."""
    route: AbstractRoute = request.match_info.route
    table: dict[AbstractRoute, Endpoint] = request.config_dict[ROUTE_ENDPOINTS_KEY]
    return table.get(route)


def json_response(data: Any, status: int = 200) -> web.Response:
    """A JSON answer; refuses NaN/Infinity, which are not JSON."""
    return web.Response(text=json.dumps(data, allow_nan=False), status=status, content_type=JSON_CONTENT_TYPE)


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object: 415 not JSON, 413 too large, 400 malformed, 422 not an object."""
    if request.content_type != JSON_CONTENT_TYPE:
        got = request.headers.get("Content-Type", "none")
        raise UnsupportedMediaType(f"Content-Type must be {JSON_CONTENT_TYPE}; got {got}. Send the body as JSON "
                                   f"with 'Content-Type: {JSON_CONTENT_TYPE}'")
    limit = request.config_dict[CONFIG_KEY].max_body_bytes
    too_large = PayloadTooLarge(f"request body is larger than the limit of {limit} bytes; send fewer or shorter "
                                "items per request, or raise max_body_bytes in the server config", limit)
    if request.content_length is not None and request.content_length > limit:
        raise too_large  # refuse before reading a byte
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip", "deflate"):
        raise UnsupportedMediaType(f"Content-Encoding {encoding!r} is not supported; send the body uncompressed "
                                   "or compressed with gzip or deflate")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise too_large from None
    except web.RequestPayloadError as e:  # a body that does not decode as its Content-Encoding says
        raise BadRequest(f"the request body could not be read ({e}); send it uncompressed, or as valid "
                         f"{encoding} data if it carries 'Content-Encoding: {encoding}'") from None
    try:
        data = json.loads(raw.decode(request.charset or "utf-8"))
    except UnicodeDecodeError as e:
        raise BadRequest(f"request body is not valid {request.charset or 'utf-8'} text ({e.reason} at byte "
                         f"{e.start}); send UTF-8 encoded JSON") from None
    except LookupError:
        raise BadRequest(f"unknown charset {request.charset!r} in Content-Type; send UTF-8 JSON") from None
    except json.JSONDecodeError as e:
        raise BadRequest(f"request body is not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); send "
                         "one JSON object") from None
    except RecursionError:
        raise BadRequest("request body is JSON nested too deeply to parse (arrays or objects inside each other "
                         "hundreds of levels deep); send a flat JSON object as the API schema describes") from None
    except ValueError as e:  # int('9' * 5000): CPython's limit on decimal digits in an integer
        if "digits" not in str(e):
            raise BadRequest(f"request body is not valid JSON ({e}); send one JSON object") from None
        raise BadRequest(f"request body has an integer with more than {sys.get_int_max_str_digits()} digits, "
                         "which cannot be parsed; send numbers with fewer digits") from None
    if not isinstance(data, dict):
        raise ValidationError("", f"the request body must be a JSON object; got {json_type(data)}")
    return data


# ---- field checks: each raises ValidationError naming the field path (e.g. items[3].response) ----

def json_type(value: Any) -> str:
    """The JSON name of a value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, dict) else type(value).__name__


def check_fields(obj: Mapping[str, Any], where: str, required: Sequence[str], optional: Sequence[str] = ()) -> None:
    """Reject missing required keys and unknown keys (a typo should not be ignored silently)."""
    prefix = f"{where}." if where else ""
    for key in required:
        if key not in obj:
            raise ValidationError(f"{prefix}{key}", "is required")
    allowed = (*required, *optional)
    for key in obj:
        if key not in allowed:
            inside = f"in {where}" if where else "in the request body"
            raise ValidationError("", f"unknown field {key!r} {inside}; allowed fields: {', '.join(allowed)}")


def expect_object(value: Any, where: str) -> dict[str, Any]:
    """`value` as a JSON object."""
    if not isinstance(value, dict):
        raise ValidationError(where, f"must be an object; got {json_type(value)}")
    return value


def expect_array(value: Any, where: str, *, min_len: int, max_len: int, limit_name: str) -> list[Any]:
    """`value` as a JSON array with min_len..max_len entries."""
    if not isinstance(value, list):
        raise ValidationError(where, f"must be an array; got {json_type(value)}")
    if len(value) < min_len:
        raise ValidationError(where, f"has {len(value)} entries; send at least {min_len}")
    if len(value) > max_len:
        raise ValidationError(where, f"has {len(value)} entries, more than the limit of {max_len}; split the "
                                     f"request, or raise {limit_name} in the server config",
                              limits={limit_name: max_len})  # e.g. "max_items": 256 in the error body
    return value


def check_unicode(value: str, where: str) -> str:
    """`value` if it can be encoded as UTF-8; JSON's "\\ud800" escape gives a lone surrogate, which cannot."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValidationError(where, f"is not valid Unicode text (a lone surrogate at character {e.start}); send "
                                     "UTF-8 text, and escape characters outside the BMP as surrogate pairs") from None
    return value


def expect_text(value: Any, where: str, *, max_chars: int, allow_empty: bool) -> str:
    """`value` as valid Unicode text of at most max_chars characters (non-empty unless allow_empty)."""
    if not isinstance(value, str) or (not allow_empty and not value.strip()):
        kind = "a string" if allow_empty else "a non-empty string"
        got = "an empty string" if value == "" else "only whitespace" if isinstance(value, str) else json_type(value)
        raise ValidationError(where, f"must be {kind}; got {got}")
    if len(value) > max_chars:
        raise ValidationError(where, f"is {len(value)} characters, more than the limit of {max_chars}; shorten "
                                     "it, or raise max_text_chars in the server config")
    return check_unicode(value, where)


def expect_optional_id(value: Any, where: str) -> str | None:
    """An optional identifier: absent or null means the default."""
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        got = "an empty string" if value == "" else json_type(value)
        raise ValidationError(where, f"must be a non-empty string or omitted; got {got}")
    return check_unicode(value, where)
