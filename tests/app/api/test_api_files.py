"""POST /v1/files: whole-file validation, the pre-flight report, and the bad-input corpus (each a 4xx in
the one error shape, naming the field, with nothing written)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.files.preflight import LengthCounter, length_stats
from app.settings import Settings

from .conftest import TEST_MAX_UPLOAD_BYTES, demonstration_lines, suite_lines, upload, write_model_dir


def assert_error(response: Any, status: int, code: str, param: str | None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) >= {"type", "code", "message", "param"}
    assert (error["code"], error["param"]) == (code, param), error
    assert "Traceback" not in response.text
    return dict(error)


def test_upload_demonstrations_reports_token_stats(
    client: TestClient,
    writer: dict[str, str],
    base_model: dict[str, Any],
    counts: Callable[[], dict[str, int]],
) -> None:
    before = counts()
    response = upload(client, writer, demonstration_lines(5), "demonstrations", model=base_model["id"])
    assert response.status_code == 201, response.text
    body = response.json()
    assert (
        body["id"].startswith("file_") and body["status"] == "ready" and body["purpose"] == "demonstrations"
    )
    report = body["preflight"]
    assert report["valid"] and report["rows"] == 5 and report["problems"] == []
    lengths = report["lengths"]
    assert lengths["unit"] == "tokens" and lengths["source"]["model_version_id"] == base_model["id"]
    # "user: what is 0 plus 0" is 6 whitespace tokens; the WordLevel tokenizer splits ":" off too.
    assert lengths["query"]["min"] == lengths["query"]["max"] == 7
    assert set(lengths["demonstration"]) == {"min", "mean", "p95", "max"}
    after = counts()
    assert after["uploaded_file"] == before["uploaded_file"] + 1
    assert after["storage_files"] == before["storage_files"] + 1
    assert client.get(f"/v1/files/{body['id']}", headers=writer).json() == body


def test_same_content_is_stored_once(
    client: TestClient, writer: dict[str, str], counts: Callable[[], dict[str, int]]
) -> None:
    content = demonstration_lines(3)
    upload(client, writer, content, "demonstrations")
    before = counts()
    second = upload(client, writer, content, "demonstrations")
    assert second.status_code == 201
    after = counts()
    assert after["uploaded_file"] == before["uploaded_file"] + 1
    assert after["storage_files"] == before["storage_files"]  # content-addressed


def test_token_stats_default_to_the_production_alias(
    client: TestClient, writer: dict[str, str], promoter: dict[str, str], base_model: dict[str, Any]
) -> None:
    moved = client.put("/v1/aliases/production", json={"version": base_model["id"]}, headers=promoter)
    assert moved.status_code == 200, moved.text
    lengths = upload(client, writer, demonstration_lines(2), "demonstrations").json()["preflight"]["lengths"]
    assert lengths["unit"] == "tokens"
    assert lengths["source"]["model_version_id"] == base_model["id"]


def test_character_stats_when_the_tokenizer_is_unreadable(
    client: TestClient, writer: dict[str, str], admin: dict[str, str], tmp_path: Path
) -> None:
    directory = write_model_dir(tmp_path / "model")
    registered = client.post(
        "/v1/models", json={"path": str(directory), "name": "gone"}, headers=admin
    ).json()
    (directory / "tokenizer.json").unlink()
    report = upload(client, writer, demonstration_lines(2), "demonstrations", model=registered["id"]).json()
    lengths = report["preflight"]["lengths"]
    assert lengths["unit"] == "characters" and lengths["source"]["model_version_id"] == registered["id"]
    assert lengths["query"]["max"] == len("user: what is 1 plus 1")


def test_length_stats_are_nearest_rank() -> None:
    counter = LengthCounter(None, {"note": "characters"})
    assert counter.lengths(["ab", "abcd"]) == [2, 4]
    assert length_stats(list(range(1, 21))) == {"min": 1, "mean": 10.5, "p95": 19, "max": 20}


def test_suite_file_preflight(client: TestClient, writer: dict[str, str]) -> None:
    response = upload(client, writer, suite_lines(4), "regression_suite")
    assert response.status_code == 201, response.text
    assert response.json()["preflight"]["rows"] == 4
    assert "prompt" in response.json()["preflight"]["lengths"]


BAD_ROWS: list[tuple[str, str, str, int, str]] = [
    # (case, purpose, content, line, field)
    ("malformed json", "demonstrations", '{"prompt": "a", "demonstration": "b"}\n{"prompt": \n', 2, "row"),
    (
        "wrong role",
        "demonstrations",
        json.dumps(
            {"messages": [{"role": "wizard", "content": "hi"}, {"role": "assistant", "content": "x"}]}
        ),
        1,
        "messages[0].role",
    ),
    (
        "empty demonstration",
        "demonstrations",
        json.dumps({"prompt": "q", "demonstration": "  "}),
        1,
        "demonstration",
    ),
    (
        "unknown field",
        "demonstrations",
        json.dumps({"prompt": "q", "demonstration": "d", "label": 1}),
        1,
        "row",
    ),
    ("huge row", "demonstrations", json.dumps({"prompt": "q" * 200_001, "demonstration": "d"}), 1, "row"),
    ("not jsonl at all", "demonstrations", "name,answer\nalice,42\n", 1, "row"),
    ("suite row in a demonstrations upload", "demonstrations", suite_lines(1), 1, "row"),
    ("demonstrations in a suite upload", "regression_suite", demonstration_lines(1), 1, "demonstration"),
    (
        "unknown grader in a suite row",
        "regression_suite",
        json.dumps({"prompt": "q", "reference": "a", "grader": "vibes"}),
        1,
        "grader",
    ),
]


@pytest.mark.parametrize(
    ("case", "purpose", "content", "line", "field"), BAD_ROWS, ids=[c[0] for c in BAD_ROWS]
)
def test_bad_rows_are_rejected_with_the_full_report(
    client: TestClient,
    writer: dict[str, str],
    counts: Callable[[], dict[str, int]],
    case: str,
    purpose: str,
    content: str,
    line: int,
    field: str,
) -> None:
    before = counts()
    response = upload(client, writer, content, purpose)
    error = assert_error(response, 422, "invalid_file", "file")
    report = error["report"]
    assert report["valid"] is False
    assert {"line": line, "field": field} in [
        {"line": p["line"], "field": p["field"]} for p in report["problems"]
    ], report
    assert counts() == before


def test_every_bad_row_is_reported(client: TestClient, writer: dict[str, str]) -> None:
    good = json.dumps({"prompt": "q", "demonstration": "d"})
    content = "\n".join([good, "{oops", good, json.dumps({"prompt": "", "demonstration": "d"}), "[1]"]) + "\n"
    report = upload(client, writer, content, "demonstrations").json()["error"]["report"]
    assert [p["line"] for p in report["problems"]] == [2, 4, 5]
    assert report["rows"] == 5


@pytest.mark.parametrize(
    "filename", ["../x.jsonl", "a/b.jsonl", "/etc/passwd", "a\\b.jsonl", "..", "x\x00.jsonl"]
)
def test_path_like_file_names_are_rejected(
    client: TestClient, writer: dict[str, str], counts: Callable[[], dict[str, int]], filename: str
) -> None:
    before = counts()
    response = upload(client, writer, demonstration_lines(1), "demonstrations", filename=filename)
    assert_error(response, 400, "invalid_filename", "file")
    assert counts() == before


def test_non_utf8_is_rejected(
    client: TestClient, writer: dict[str, str], counts: Callable[[], dict[str, int]]
) -> None:
    before = counts()
    content = json.dumps({"prompt": "caf\u00e9", "demonstration": "d"}, ensure_ascii=False).encode("latin-1")
    assert_error(upload(client, writer, content, "demonstrations"), 400, "invalid_encoding", "file")
    assert counts() == before


@pytest.mark.parametrize(
    "excess", [1, 200 * 1024], ids=["checked-after-reading", "refused-by-content-length"]
)
def test_oversized_upload_is_413(
    client: TestClient,
    writer: dict[str, str],
    counts: Callable[[], dict[str, int]],
    backend: Settings,
    excess: int,
) -> None:
    assert backend.max_upload_bytes == TEST_MAX_UPLOAD_BYTES
    row = json.dumps({"prompt": "q" * 1000, "demonstration": "d"}) + "\n"
    content = (row * (TEST_MAX_UPLOAD_BYTES // len(row) + 300))[: TEST_MAX_UPLOAD_BYTES + excess]
    before = counts()
    assert_error(upload(client, writer, content, "demonstrations"), 413, "file_too_large", "file")
    assert counts() == before


def test_oversized_json_body_is_413(client: TestClient, writer: dict[str, str]) -> None:
    body = {"base": "x", "stages": [], "padding": "x" * 2_000_000}
    assert_error(client.post("/v1/jobs", json=body, headers=writer), 413, "body_too_large", None)


def test_wrong_purpose_value_is_422(
    client: TestClient, writer: dict[str, str], counts: Callable[[], dict[str, int]]
) -> None:
    before = counts()
    assert_error(
        upload(client, writer, demonstration_lines(1), "fine-tune"), 422, "invalid_request", "purpose"
    )
    assert counts() == before


def test_unknown_model_for_token_stats_is_404(client: TestClient, writer: dict[str, str]) -> None:
    response = upload(client, writer, demonstration_lines(1), "demonstrations", model="alias:no-such-alias")
    assert_error(response, 404, "alias_not_found", "model")


def test_empty_file_is_rejected(client: TestClient, writer: dict[str, str]) -> None:
    error = assert_error(upload(client, writer, "\n\n", "demonstrations"), 422, "invalid_file", "file")
    assert error["report"]["problems"][0]["field"] == "file"


def test_unknown_file_is_404(client: TestClient, reader: dict[str, str]) -> None:
    assert_error(client.get("/v1/files/file_nope", headers=reader), 404, "file_not_found", "id")
