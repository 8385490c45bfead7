"""Schemathesis against the server's own OpenAPI document: every operation, no 5xx, responses match the schema.

The server is a real process with a paced (instant) engine, so fuzzed max_tokens or images cost nothing.
Hypothesis runs a bounded number of examples per operation (OPS_FUZZ_EXAMPLES, default 25). The operations
are driven from a plain test: schemathesis 4.32's lazy pytest fixture loader reads a private pytest attribute
that pytest 9 removed.
"""

from __future__ import annotations

import os
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import stop_server
from tests.ops.conftest import start_scripted_server

EXAMPLES = int(os.environ.get("OPS_FUZZ_EXAMPLES", "25"))
# No 5xx, and every response as documented. Left out: positive_data_acceptance (the API has cross-field rules,
# e.g. a tool message needs tool_call_id, that JSON Schema does not express) and negative_data_rejection.
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]


def test_every_operation_conforms_to_the_schema(tmp_path: Path) -> None:
    server = start_scripted_server(tmp_path, {"OPS_CHUNKS": "3", "MSSERVE_LOG_LEVEL": "warning"})
    failures: list[str] = []
    tested: list[str] = []
    try:
        schema = schemathesis.openapi.from_url(f"{server.base_url}/openapi.json")
        for result in schema.get_all_operations():
            operation = result.ok()
            tested.append(operation.label)

            @given(case=operation.as_strategy())
            @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
            def check(case) -> None:  # type: ignore[no-untyped-def]
                case.call_and_validate(base_url=server.base_url, checks=CHECKS, timeout=30)

            try:
                check()
            except (Exception, BaseExceptionGroup) as exc:  # schemathesis raises a BaseExceptionGroup; report all
                failures.append(f"{operation.label}: {exc}")
        assert server.process.poll() is None
    finally:
        stop_server(server)
    print(f"fuzzed {len(tested)} operations, up to {EXAMPLES} examples each: {', '.join(tested)}")
    assert {"POST /v1/chat/completions", "POST /v1/captions", "GET /metrics", "GET /"} <= set(tested)
    assert failures == [], "\n\n".join(failures)
    assert "Traceback" not in server.log()
