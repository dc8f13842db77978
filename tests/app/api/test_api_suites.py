"""POST /v1/suites: a regression_suite file bound to a name, a grader and gate settings."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from .conftest import demonstration_lines, make_suite, suite_lines, unique, upload
from .test_api_files import assert_error


@pytest.fixture()
def suite_file(client: TestClient, writer: dict[str, str]) -> str:
    return str(upload(client, writer, suite_lines(), "regression_suite").json()["id"])


def test_create_get_and_list(
    client: TestClient, writer: dict[str, str], reader: dict[str, str], suite_file: str
) -> None:
    body = {
        "name": unique("tool-use"),
        "file": suite_file,
        "grader": "contains",
        "tolerance": 2.0,
        "min_score": None,
    }
    response = client.post("/v1/suites", json=body, headers=writer)
    assert response.status_code == 201, response.text
    suite = response.json()
    assert suite["id"].startswith("suite_") and suite["num_items"] == 3 and len(suite["sha256"]) == 64
    assert suite["decoding"] == {"greedy": True, "max_new_tokens": 256, "temperature": 0.0}
    assert client.get(f"/v1/suites/{suite['id']}", headers=reader).json() == suite
    listed = client.get("/v1/suites", params={"limit": 100}, headers=reader).json()
    assert suite["id"] in [s["id"] for s in listed["data"]]
    # The same name with the same content and settings is the same suite; anything else is a conflict.
    again = client.post("/v1/suites", json=body, headers=writer)
    assert again.status_code == 200 and again.json()["id"] == suite["id"]
    assert_error(
        client.post("/v1/suites", json={**body, "tolerance": 5.0}, headers=writer),
        409,
        "suite_exists",
        "name",
    )


BAD_SUITES: list[tuple[str, dict[str, Any], int, str, str]] = [
    ("unknown grader", {"grader": "vibes"}, 422, "invalid_suite", "grader"),
    ("negative tolerance", {"tolerance": -1}, 422, "invalid_request", "tolerance"),
    ("min_score above 100", {"min_score": 101}, 422, "invalid_request", "min_score"),
    ("bad name", {"name": "Tool Use!"}, 422, "invalid_suite", "name"),
    (
        "unknown grader option",
        {"grader_options": {"abs_tol": 1, "fuzz": 2}},
        422,
        "invalid_suite",
        "grader_options",
    ),
    (
        "greedy with a temperature",
        {"decoding": {"greedy": True, "temperature": 0.7}},
        422,
        "invalid_suite",
        "decoding",
    ),
    ("unknown field", {"weight": 2}, 422, "invalid_request", "weight"),
    ("unknown file", {"file": "file_nope"}, 404, "file_not_found", "file"),
]


@pytest.mark.parametrize(
    ("case", "change", "status", "code", "param"), BAD_SUITES, ids=[c[0] for c in BAD_SUITES]
)
def test_bad_suites(
    client: TestClient,
    writer: dict[str, str],
    suite_file: str,
    counts: Callable[[], dict[str, int]],
    case: str,
    change: dict[str, Any],
    status: int,
    code: str,
    param: str,
) -> None:
    before = counts()
    body = {"name": unique("s"), "file": suite_file, "grader": "exact_match", **change}
    assert_error(client.post("/v1/suites", json=body, headers=writer), status, code, param)
    assert counts() == before


def test_a_demonstrations_file_is_the_wrong_purpose(client: TestClient, writer: dict[str, str]) -> None:
    file_id = upload(client, writer, demonstration_lines(), "demonstrations").json()["id"]
    response = client.post("/v1/suites", json={"name": unique("s"), "file": file_id}, headers=writer)
    assert_error(response, 422, "wrong_file_purpose", "file")


def test_references_are_checked_against_the_suite_grader(client: TestClient, writer: dict[str, str]) -> None:
    # Plain strings pass the upload's default (exact_match) rules but are not numbers for "numeric".
    rows = "".join(json.dumps({"prompt": f"q{i}", "reference": "forty"}) + "\n" for i in range(2))
    file_id = upload(client, writer, rows, "regression_suite").json()["id"]
    error = assert_error(
        client.post(
            "/v1/suites", json={"name": unique("s"), "file": file_id, "grader": "numeric"}, headers=writer
        ),
        422,
        "invalid_suite",
        "file",
    )
    assert [p["line"] for p in error["problems"]] == [1, 2]


def test_suites_need_jobs_write(client: TestClient, reader: dict[str, str], suite_file: str) -> None:
    response = client.post("/v1/suites", json={"name": unique("s"), "file": suite_file}, headers=reader)
    assert_error(response, 403, "insufficient_scope", None)


def test_load_suite_for_workers(client: TestClient, writer: dict[str, str], app: Any) -> None:
    from app.suites.service import load_suite

    created = make_suite(client, writer, grader="contains", tolerance=3.0)
    with app.state.sessionmaker() as session:
        parsed = load_suite(session, app.state.store, created["id"])
    assert parsed.sha256 == created["sha256"] and parsed.meta.tolerance == 3.0 and len(parsed) == 3


def test_a_stored_suite_failing_a_newer_check_is_named_when_loaded(
    client: TestClient, writer: dict[str, str], app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A suite stored before a check existed (here: a tighter bound on regex size) is reported by id
    # and name, with the problem, not as an unexpected error.
    from app.evaluation import graders
    from app.suites.service import load_suite

    row = json.dumps({"prompt": "digits?", "reference": r"\d{50}"})
    file_id = upload(client, writer, row + "\n", "regression_suite").json()["id"]
    name = unique("regex-suite")
    created = client.post(
        "/v1/suites", json={"name": name, "file": file_id, "grader": "regex"}, headers=writer
    ).json()
    monkeypatch.setattr(graders, "MAX_REGEX_EXPANSION", 10)
    with app.state.sessionmaker() as session, pytest.raises(RuntimeError) as raised:
        load_suite(session, app.state.store, created["id"])
    message = str(raised.value)
    assert created["id"] in message and name in message and "expand" in message
