"""Fuzz every operation of the OpenAPI schema with schemathesis (valid and invalid inputs): no 5xx."""

from __future__ import annotations

import os
from typing import Any

import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from .conftest import Tokens

# Per operation and mode: 12 keeps the fuzz near 10 s per backend; raise it for a deeper local run.
MAX_EXAMPLES = int(os.environ.get("SDFT_FUZZ_EXAMPLES", "12"))


def test_no_server_errors(app: FastAPI, tokens: Tokens) -> None:
    # (schemathesis' pytest integration, `from_fixture`, does not run under pytest 9, so drive it here.)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    # An admin token reaches past auth into every handler; requests without one are covered elsewhere.
    headers = Tokens.header(tokens.admin)
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=MAX_EXAMPLES,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                database=None,
            )
            def call(case: Any) -> None:
                response = case.call(headers=headers)
                case.validate_response(response, checks=[not_a_server_error])

            try:
                call()
            except Unsatisfiable:
                assert mode == GenerationMode.NEGATIVE  # no parameters to get wrong (/healthz, ...)
            except Exception as exc:  # collect every operation's failure, then report them together
                failures.append(f"{operation.label} ({mode.value}): {str(exc)[:2000]}")
    assert not failures, "\n\n".join(failures)


# Bodies no schema-driven generator produces: non-finite numbers (Python's JSON reader accepts them),
# nesting deeper than any parser's recursion limit, and a body streamed without a length.
HOSTILE_BODIES = {
    "nan": b'{"name": NaN, "version": NaN, "base": NaN, "tolerance": NaN}',
    "infinity": b'{"name": Infinity, "tolerance": -Infinity, "stages": Infinity}',
    "deep": b"[" * 50_000 + b"]" * 50_000,
    "deep-object": b'{"a":' * 20_000 + b"1" + b"}" * 20_000,
}


def test_hostile_bodies_never_cause_a_server_error(app: FastAPI, tokens: Tokens) -> None:
    from fastapi.testclient import TestClient

    schema = app.openapi()
    writes = [
        (method.upper(), path)
        for path, operations in schema["paths"].items()
        for method in operations
        if method in ("post", "put", "patch", "delete") and path.startswith("/v1/")
    ]
    assert len(writes) >= 8
    headers = {**Tokens.header(tokens.admin), "Content-Type": "application/json"}
    failures = []
    with TestClient(app) as client:
        for method, path in writes:
            url = path.replace("{", "").replace("}", "")  # ids that do not exist: still no 5xx
            for name, body in HOSTILE_BODIES.items():
                response = client.request(method, url, content=body, headers=headers)
                if response.status_code >= 500:
                    failures.append(f"{method} {path} {name}: {response.status_code} {response.text[:200]}")
            chunked = client.request(
                method, url, content=iter([b"{", b"x" * (2 * 1024 * 1024), b"}"]), headers=headers
            )
            if chunked.status_code >= 500:
                failures.append(f"{method} {path} chunked: {chunked.status_code}")
    assert not failures, "\n".join(failures)
