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
