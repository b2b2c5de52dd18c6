"""Property-based API test: schemathesis generates requests (valid and invalid) for every operation of
/openapi.json and sends them to a live server on 127.0.0.1; none may get a 5xx."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from tests.node.labeling.conftest import ADMIN, LABELER

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is not installed: the property-based API "
                                                          "test is NOT run (pip install schemathesis)")
EXAMPLES = 30


def test_no_generated_request_gets_a_server_error(server: str) -> None:
    with urllib.request.urlopen(f"{server}/openapi.json", timeout=10) as resp:
        schema = schemathesis.openapi.from_dict(json.load(resp))
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/comparisons", "/v1/rankings", "/v1/feedback", "/v1/stats"}
    failures: list[str] = []
    for op in operations:
        modes = [(ADMIN, schemathesis.GenerationMode.POSITIVE)]
        if op.method.upper() == "POST":  # invalid bodies too (a GET without parameters has nothing to break)
            modes.append((LABELER, schemathesis.GenerationMode.NEGATIVE))
        for headers, mode in modes:
            @given(case=op.as_strategy(mode))
            @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            def run(case: Any) -> None:
                response = case.call(base_url=server, headers=headers, timeout=10)  # noqa: B023 - run() runs now
                if response.status_code >= 500:
                    failures.append(f"{case.method} {case.path} {case.body!r:.300} -> {response.status_code} "
                                    f"{response.text[:300]}")
                else:
                    body = response.json()
                    assert isinstance(body, dict)
                    if response.status_code >= 400:
                        assert set(body) == {"ok", "error", "status"} and body["status"] == response.status_code
            run()
    assert failures == []
