"""The OpenAPI document is one a generated client can use as is: every operation has a stable, unique
operationId (its handler's name), every documented error references the one error schema, and every
operation documents its success response."""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI

ERROR_REF = "#/components/schemas/ErrorResponse"
METHODS = {"get", "post", "put", "patch", "delete"}


def operations(app: FastAPI) -> list[tuple[str, str, dict[str, Any]]]:
    schema = app.openapi()
    return [
        (method, path, operation)
        for path, item in schema["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    ]


def test_every_operation_has_a_unique_snake_case_operation_id(app: FastAPI) -> None:
    ids = [op.get("operationId") for _method, _path, op in operations(app)]
    assert all(ids), [f"{m} {p}" for m, p, op in operations(app) if not op.get("operationId")]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", str(i)) for i in ids), ids
    named = {(m, p): op["operationId"] for m, p, op in operations(app)}
    # Stable names clients are generated with: renaming a handler renames a client method.
    assert named[("get", "/v1/jobs")] == "list_jobs" and named[("post", "/v1/jobs")] == "create_job"
    assert named[("post", "/v1/webhooks")] == "create_webhook"
    assert named[("get", "/v1/webhooks/{webhook_id}/deliveries")] == "list_webhook_deliveries"
    assert named[("put", "/v1/aliases/{name}")] == "promote_alias"
    assert named[("patch", "/v1/models/{version_id}")] == "update_model"
    assert named[("get", "/v1/jobs/{job_id}/metrics")] == "get_job_metrics"


def test_every_error_response_references_the_error_schema(app: FastAPI) -> None:
    schema = app.openapi()
    error = schema["components"]["schemas"]["ErrorResponse"]
    assert error["required"] == ["error"]
    detail = schema["components"]["schemas"][error["properties"]["error"]["$ref"].rsplit("/", 1)[1]]
    assert set(detail["required"]) == {"type", "code", "message", "param"}
    assert "HTTPValidationError" not in schema["components"]["schemas"]  # our 422s have the error shape
    wrong = []
    for method, path, operation in operations(app):
        for status, response in operation["responses"].items():
            if status.startswith("2"):
                continue
            ref = response.get("content", {}).get("application/json", {}).get("schema", {}).get("$ref")
            if ref != ERROR_REF:
                wrong.append(f"{method} {path} {status}: {response}")
    assert not wrong, "\n".join(wrong)


def test_every_operation_documents_its_success_and_its_errors(app: FastAPI) -> None:
    missing = []
    for method, path, operation in operations(app):
        statuses = set(operation["responses"])
        successes = {s for s in statuses if s.startswith("2")}
        if not successes:
            missing.append(f"{method} {path}: no 2xx")
        for status in successes:
            content = operation["responses"][status].get("content")
            if not content or not all("schema" in media for media in content.values()):
                missing.append(f"{method} {path} {status}: no schema")
        if path.startswith("/v1/") and not {"401", "404", "422", "500", "503"} <= statuses:
            missing.append(f"{method} {path}: errors undocumented ({sorted(statuses)})")
    assert not missing, "\n".join(missing)


def test_a_request_validation_error_matches_the_documented_schema(app: FastAPI, client: Any) -> None:
    """The documented error shape is what the API answers (a 401 and a 422 here)."""
    unauthenticated = client.get("/v1/jobs")
    assert unauthenticated.status_code == 401
    body = unauthenticated.json()
    assert set(body) == {"error"} and {"type", "code", "message", "param"} <= set(body["error"])
