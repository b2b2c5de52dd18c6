"""/openapi.json documents every route, and the server's real answers match its schemas."""

from __future__ import annotations

import re
from typing import Any

import pytest
from aiohttp import web

from node.http import Endpoint, Feature, Role, Schema

from .conftest import SCORER

_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def check(schema: dict[str, Any], value: Any, doc: dict[str, Any], where: str = "$") -> None:
    """A small JSON Schema checker for the keywords these documents use; raises AssertionError."""
    if "$ref" in schema:
        node: Any = doc
        for part in schema["$ref"].removeprefix("#/").split("/"):
            node = node[part]
        return check(node, value, doc, where)
    if "const" in schema:
        assert value == schema["const"], where
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]

        def fits(t: str) -> bool:
            if t == "number":
                return isinstance(value, int | float) and not isinstance(value, bool)
            if t == "integer":
                return isinstance(value, int) and not isinstance(value, bool)
            return isinstance(value, _TYPES[t]) and not (t != "boolean" and isinstance(value, bool))

        assert any(fits(t) for t in types), f"{where}: {value!r} is not {types}"
    if isinstance(value, dict):
        for key in schema.get("required", []):
            assert key in value, f"{where}: missing {key}"
        props = schema.get("properties", {})
        for key, item in value.items():
            if key in props:
                check(props[key], item, doc, f"{where}.{key}")
            else:
                assert schema.get("additionalProperties", True) is not False, f"{where}: unexpected {key}"
    if isinstance(value, list):
        assert schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", len(value)), where
        prefix = schema.get("prefixItems", [])
        for i, item in enumerate(value):
            sub = prefix[i] if i < len(prefix) else schema.get("items")
            if sub is not None:
                check(sub, item, doc, f"{where}[{i}]")
    if isinstance(value, str):
        assert schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", len(value)), where
        pattern = schema.get("pattern", "")
        assert re.search(pattern, value), f"{where}: {value!r} does not match {pattern}"
    if isinstance(value, int | float) and not isinstance(value, bool):
        assert schema.get("minimum", value) <= value <= schema.get("maximum", value), where
    return None


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "$ref"] + [r for v in node.values() for r in refs(v)]
    return [r for v in node for r in refs(v)] if isinstance(node, list) else []


async def ping(request: web.Request) -> web.Response:
    return web.json_response({"pong": request.match_info["name"]})


EXTRA = Feature("extra", (
    Endpoint(method="GET", path=r"/v1/ping/{name:\w+}", handler=ping, role=Role.ADMIN, summary="ping",
             operation_id="ping", response=Schema("Pong", {"type": "object", "required": ["pong"]})),
    Endpoint(method="GET", path="/label", handler=ping, role=None, summary="an HTML page", operation_id="page",
             in_openapi=False),
))


async def test_openapi_documents_every_registered_route(make_client) -> None:
    client = await make_client(features=(EXTRA,))
    resp = await client.get("/openapi.json")
    assert resp.status == 200
    doc = await resp.json()
    assert doc["openapi"] == "3.1.0" and doc["info"]["title"] == "rewardnode" and doc["info"]["version"]

    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    routed = {(r.method, re.sub(r"\{(\w+)(:[^}]*)?\}", r"{\1}", r.resource.canonical))
              for r in client.app.router.routes() if r.method != "HEAD"}
    assert documented == routed - {("GET", "/label")}
    assert {("POST", "/v1/score"), ("POST", "/v1/compare"), ("GET", "/v1/models"), ("GET", "/healthz"),
            ("GET", "/openapi.json"), ("GET", "/v1/ping/{name}")} == documented

    for ref in refs(doc):  # every $ref resolves
        node: Any = doc
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]
    ops = [op for ops in doc["paths"].values() for op in ops.values()]
    assert len({op["operationId"] for op in ops}) == len(ops)
    for op in ops:
        assert "200" in op["responses"] and "default" in op["responses"]
    assert {"ScoreRequest", "ScoreResponse", "CompareRequest", "CompareResponse", "ModelList", "Error"} <= set(
        doc["components"]["schemas"])
    assert doc["components"]["securitySchemes"]["bearerAuth"] == {**doc["components"]["securitySchemes"]["bearerAuth"],
                                                                  "type": "http", "scheme": "bearer"}

    score = doc["paths"]["/v1/score"]["post"]
    assert score["x-required-role"] == "scorer" and "security" not in score  # inherits the global bearer scheme
    assert {"400", "401", "403", "404", "413", "415", "422"} <= set(score["responses"])
    assert doc["paths"]["/healthz"]["get"]["security"] == []
    assert doc["paths"]["/v1/ping/{name}"]["get"]["parameters"][0]["name"] == "name"
    assert (await (await client.get("/v1/ping/bob", headers={"Authorization": "Bearer x"})).json())["status"] == 401


async def test_real_answers_match_the_documented_schemas(client) -> None:
    doc = await (await client.get("/openapi.json")).json()

    async def call(method: str, path: str, body: Any = None, status: int = 200) -> None:
        op = doc["paths"][path][method.lower()]
        if body is not None:  # the documented request schema agrees with the server's checks
            request_schema = op["requestBody"]["content"]["application/json"]["schema"]
            if status == 422:
                with pytest.raises(AssertionError):
                    check(request_schema, body, doc)
            else:
                check(request_schema, body, doc)
        resp = await client.request(method, path, json=body, headers=SCORER)
        assert resp.status == status
        answer = op["responses"][str(status)]
        check(answer["content"]["application/json"]["schema"], await resp.json(), doc)

    await call("POST", "/v1/score", {"model": "rm-b", "items": [{"prompt": "p", "response": "r"}] * 3})
    await call("POST", "/v1/compare", {"prompt": "p", "responses": ["a", "bb", "ccc"]})
    await call("POST", "/v1/compare", {"prompt": "p", "responses": ["a", "bb"]})
    await call("GET", "/v1/models")
    await call("GET", "/healthz")
    await call("GET", "/openapi.json")
    await call("POST", "/v1/score", {"items": []}, status=422)  # error bodies match the Error schema
    await call("POST", "/v1/score", {"items": [{"prompt": "", "response": ""}]}, status=422)
    # a blank response is refused: the schema says so, not only minLength 1
    await call("POST", "/v1/score", {"items": [{"prompt": "", "response": " \n\t"}]}, status=422)
    await call("POST", "/v1/compare", {"prompt": "p", "responses": ["a", "  "]}, status=422)
    await call("POST", "/v1/compare", {"prompt": "p", "responses": ["a"], "x": 1}, status=422)
    await call("POST", "/v1/score", {"model": "zz", "items": [{"prompt": "", "response": "x"}]}, status=404)
