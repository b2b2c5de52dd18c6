"""The OpenAPI 3.1 document of the server, built from the registered endpoints (served at /openapi.json)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from node.http.errors import KEY_ERROR, KEY_OK, KEY_STATUS
from node.http.routes import JSON_CONTENT_TYPE, Endpoint

OPENAPI_VERSION = "3.1.0"
BEARER_SCHEME = "bearerAuth"
ERROR_SCHEMA = "Error"
_PATH_PARAM_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::[^}]*)?\}")

ERROR_SCHEMA_BODY: dict[str, Any] = {
    "type": "object",
    "description": "The one error shape of every failure: what is wrong and how to fix it.",
    "required": [KEY_OK, KEY_ERROR, KEY_STATUS],
    "properties": {
        KEY_OK: {"const": False},
        KEY_ERROR: {"type": "string"},
        KEY_STATUS: {"type": "integer", "description": "The HTTP status, repeated."},
    },
    "additionalProperties": {"type": "integer", "minimum": 1,
                             "description": "A server limit the request went over, under its config name: "
                                            "max_body_bytes with 413, max_items (/v1/score) or "
                                            "max_compare_responses (/v1/compare) with 422."},
}


def _json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {JSON_CONTENT_TYPE: {"schema": schema}}


def _error_statuses(endpoint: Endpoint) -> list[int]:
    statuses = set(endpoint.errors)
    if endpoint.role is not None:
        statuses |= {401, 403}
    if endpoint.request is not None:
        statuses |= {400, 413, 415, 422}
    return sorted(statuses)


def _operation(endpoint: Endpoint) -> dict[str, Any]:
    op: dict[str, Any] = {"operationId": endpoint.operation_id, "summary": endpoint.summary}
    if endpoint.tags:
        op["tags"] = list(endpoint.tags)
    params = [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
              for p in _PATH_PARAM_RE.findall(endpoint.path)] + [dict(p) for p in endpoint.parameters]
    if params:
        op["parameters"] = params
    if endpoint.role is None:
        op["security"] = []  # public
    else:
        op["x-required-role"] = endpoint.role.value
    if endpoint.request is not None:
        op["requestBody"] = {"required": True, "content": _json_content(endpoint.request.ref)}
    ok: dict[str, Any] = {"description": "OK"}
    if endpoint.response is not None:
        ok["content"] = _json_content(endpoint.response.ref)
    responses: dict[str, Any] = {"200": ok}
    for status in _error_statuses(endpoint):
        responses[str(status)] = {"description": HTTPStatus(status).phrase,
                                  "content": _json_content({"$ref": f"#/components/schemas/{ERROR_SCHEMA}"})}
    responses["default"] = {"$ref": f"#/components/responses/{ERROR_SCHEMA}"}
    op["responses"] = responses
    return op


def openapi_path(path: str) -> str:
    """An aiohttp path as an OpenAPI path template: `{id:\\d+}` -> `{id}`."""
    return _PATH_PARAM_RE.sub(r"{\1}", path)


def build_openapi(
    endpoints: Sequence[Endpoint], *, title: str = "rewardnode", version: str = "0.0.0", description: str = ""
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of these endpoints (those with in_openapi)."""
    paths: dict[str, dict[str, Any]] = {}
    schemas: dict[str, Any] = {ERROR_SCHEMA: ERROR_SCHEMA_BODY}
    operation_ids: set[str] = set()
    for ep in endpoints:
        if not ep.in_openapi:
            continue
        if ep.operation_id in operation_ids:
            raise ValueError(f"two endpoints share operation_id {ep.operation_id!r}; give each a unique one")
        operation_ids.add(ep.operation_id)
        for schema in (ep.request, ep.response):
            if schema is None:
                continue
            if schema.name in schemas and schemas[schema.name] != schema.body:
                raise ValueError(f"two different schemas are named {schema.name!r}; rename one")
            schemas[schema.name] = dict(schema.body)
        paths.setdefault(openapi_path(ep.path), {})[ep.method.lower()] = _operation(ep)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": title, "version": version, "description": description},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": {ERROR_SCHEMA: {"description": "Any other failure, in the one error shape.",
                                         "content": _json_content({"$ref": f"#/components/schemas/{ERROR_SCHEMA}"})}},
            "securitySchemes": {BEARER_SCHEME: {
                "type": "http", "scheme": "bearer",
                "description": "Authorization: Bearer <token>; tokens carry a role (admin, scorer, labeler).",
            }},
        },
        "security": [{BEARER_SCHEME: []}],
    }
