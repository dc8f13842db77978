"""Listing, downloading and deleting files, and deleting suites: team-scoped (another team's answers
404), and nothing a job or a suite refers to can be deleted (409 `file_in_use` / `suite_in_use`)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.db import session_scope
from app.files import service as files
from app.registry import service as registry
from app.settings import Settings
from app.storage import make_store

from .conftest import demonstration_lines, make_suite, suite_lines, unique, upload
from .test_api_files import assert_error


def _upload(client: TestClient, headers: dict[str, str], purpose: str = "regression_suite") -> dict[str, Any]:
    content = suite_lines() if purpose == "regression_suite" else demonstration_lines()
    response = upload(client, headers, content, purpose, filename=f"{unique('f')}.jsonl")
    assert response.status_code == 201, response.text
    return dict(response.json())


def test_files_are_listed_newest_first_by_team_and_purpose(
    client: TestClient, writer: dict[str, str], rival: dict[str, str]
) -> None:
    older = _upload(client, writer, "demonstrations")
    newer = _upload(client, writer)
    theirs = _upload(client, rival)
    page = client.get("/v1/files", params={"limit": 100}, headers=writer).json()
    ids = [f["id"] for f in page["data"]]
    assert ids.index(newer["id"]) < ids.index(older["id"]) and theirs["id"] not in ids
    assert page["object"] == "list" and page["first_id"] == ids[0]
    suites_only = client.get(
        "/v1/files", params={"purpose": "regression_suite", "limit": 100}, headers=writer
    )
    assert {f["purpose"] for f in suites_only.json()["data"]} == {"regression_suite"}
    assert older["id"] not in [f["id"] for f in suites_only.json()["data"]]
    first = client.get("/v1/files", params={"limit": 1}, headers=writer).json()
    assert first["has_more"] and len(first["data"]) == 1
    after = client.get("/v1/files", params={"limit": 1, "after": first["last_id"]}, headers=writer).json()
    assert after["data"][0]["id"] < first["last_id"]
    assert_error(
        client.get("/v1/files", params={"purpose": "other"}, headers=writer),
        422,
        "invalid_request",
        "purpose",
    )


def test_content_is_the_stored_bytes_for_the_team_only(
    client: TestClient, writer: dict[str, str], rival: dict[str, str]
) -> None:
    content = demonstration_lines(3)
    file_id = upload(client, writer, content, "demonstrations", filename="mine.jsonl").json()["id"]
    response = client.get(f"/v1/files/{file_id}/content", headers=writer)
    assert response.status_code == 200
    assert response.content == content.encode()
    assert response.headers["content-type"] == "application/jsonl"
    assert response.headers["content-length"] == str(len(content.encode()))
    assert_error(client.get(f"/v1/files/{file_id}/content", headers=rival), 404, "file_not_found", "id")
    assert_error(client.get("/v1/files/file_nope/content", headers=writer), 404, "file_not_found", "id")


def test_content_missing_from_storage_is_an_error_not_a_short_body(
    client: TestClient, writer: dict[str, str], db: sessionmaker[Session], backend: Settings
) -> None:
    # Unique bytes: blobs are shared by content, and this one is removed from the store.
    row = {"prompt": f"what is {unique('x')}", "demonstration": "a word"}
    file_id = upload(client, writer, json.dumps(row) + "\n", "demonstrations").json()["id"]
    with session_scope(db) as session:
        uri = files.get_file(session, file_id).storage_uri
    make_store(backend.storage_path).local_path(uri).unlink()
    # Before: 200 with a Content-Length, then the body ended at 0 bytes.
    assert_error(
        client.get(f"/v1/files/{file_id}/content", headers=writer), 500, "file_content_missing", "id"
    )


def test_deleting_a_file_waits_for_a_job_or_suite_binding_it(
    client: TestClient, writer: dict[str, str], db: sessionmaker[Session]
) -> None:
    # A job or suite being created holds the file's row (FOR SHARE) until it commits, so a deletion
    # then sees it and answers file_in_use instead of leaving the new job with a missing file.
    file_id = upload(client, writer, demonstration_lines(2), "demonstrations").json()["id"]
    binding = db()
    binding.begin()
    files.require_ready_file(binding, file_id, purpose=files.FilePurpose.DEMONSTRATIONS, param="file")
    deleted: list[int] = []
    thread = threading.Thread(
        target=lambda: deleted.append(client.delete(f"/v1/files/{file_id}", headers=writer).status_code)
    )
    thread.start()
    thread.join(timeout=0.5)
    if db.kw["bind"].dialect.name == "postgresql":
        assert thread.is_alive() and not deleted
    binding.rollback()
    binding.close()
    thread.join(timeout=30)
    assert deleted == [200]


def test_a_file_in_use_is_kept_and_an_unused_one_deleted(
    client: TestClient,
    writer: dict[str, str],
    rival: dict[str, str],
    reader: dict[str, str],
    job_body: dict[str, Any],
    training_file: str,
    counts: Callable[[], dict[str, int]],
) -> None:
    # Bound to a suite: kept.
    suite = make_suite(client, writer)
    error = assert_error(
        client.delete(f"/v1/files/{suite['file']}", headers=writer), 409, "file_in_use", "id"
    )
    assert suite["id"] in error["message"]
    # Trained on by a job (any status, here a fresh one): kept.
    job = client.post("/v1/jobs", json=job_body, headers=writer)
    assert job.status_code == 201, job.text
    error = assert_error(
        client.delete(f"/v1/files/{training_file}", headers=writer), 409, "file_in_use", "id"
    )
    assert "job_" in error["message"]
    client.post(f"/v1/jobs/{job.json()['id']}/cancel", headers=writer)
    assert_error(client.delete(f"/v1/files/{training_file}", headers=writer), 409, "file_in_use", "id")

    unused = _upload(client, writer, "demonstrations")
    assert_error(client.delete(f"/v1/files/{unused['id']}", headers=rival), 404, "file_not_found", "id")
    assert_error(client.delete(f"/v1/files/{unused['id']}", headers=reader), 403, "insufficient_scope", None)
    before = counts()
    deleted = client.delete(f"/v1/files/{unused['id']}", headers=writer)
    assert deleted.json() == {"id": unused["id"], "object": "file", "deleted": True}
    after = counts()
    assert after["uploaded_file"] == before["uploaded_file"] - 1
    assert after["storage_files"] == before["storage_files"]  # the blob goes with `sdft gc`
    assert_error(client.get(f"/v1/files/{unused['id']}", headers=writer), 404, "file_not_found", "id")
    assert_error(client.delete(f"/v1/files/{unused['id']}", headers=writer), 404, "file_not_found", "id")


def test_a_suite_in_use_is_kept_and_an_unused_one_deleted(
    client: TestClient,
    db: sessionmaker[Session],
    writer: dict[str, str],
    rival: dict[str, str],
    job_body: dict[str, Any],
    base_model: dict[str, Any],
) -> None:
    # In a job's general suites.
    general = make_suite(client, writer)
    body = {**job_body, "general_suites": [general["id"]]}
    assert client.post("/v1/jobs", json=body, headers=writer).status_code == 201
    error = assert_error(
        client.delete(f"/v1/suites/{general['id']}", headers=writer), 409, "suite_in_use", "id"
    )
    assert "job_" in error["message"]
    # In a stage's suites.
    staged = make_suite(client, writer)
    stage = {**job_body["stages"][0], "suites": [staged["id"]]}
    assert client.post("/v1/jobs", json={**job_body, "stages": [stage]}, headers=writer).status_code == 201
    assert_error(client.delete(f"/v1/suites/{staged['id']}", headers=writer), 409, "suite_in_use", "id")
    # Scored in the registry.
    scored = make_suite(client, writer)
    with session_scope(db) as session:
        registry.record_score(
            session,
            model_version_id=base_model["id"],
            suite_sha256=scored["sha256"],
            decoding_hash="d" * 64,
            score=50.0,
            n=3,
            per_item=[],
            suite_id=scored["id"],
        )
    error = assert_error(
        client.delete(f"/v1/suites/{scored['id']}", headers=writer), 409, "suite_in_use", "id"
    )
    assert "scores" in error["message"]

    unused = make_suite(client, writer)
    assert_error(client.delete(f"/v1/suites/{unused['id']}", headers=rival), 404, "suite_not_found", "id")
    deleted = client.delete(f"/v1/suites/{unused['id']}", headers=writer)
    assert deleted.json() == {"id": unused["id"], "object": "suite", "deleted": True}
    assert_error(client.get(f"/v1/suites/{unused['id']}", headers=writer), 404, "suite_not_found", "id")
    # Its file stays, and is free to delete now.
    assert client.get(f"/v1/files/{unused['file']}", headers=writer).status_code == 200
    assert client.delete(f"/v1/files/{unused['file']}", headers=writer).status_code == 200


def test_another_teams_user_of_a_file_is_not_named(
    client: TestClient, admin: dict[str, str], rival: dict[str, str]
) -> None:
    """An admin may bind a suite to any team's file; the file's team learns it is in use, not by what."""
    theirs = _upload(client, rival)
    body = {"name": unique("admin-suite"), "file": theirs["id"], "grader": "exact_match"}
    created = client.post("/v1/suites", json=body, headers=admin)
    assert created.status_code == 201, created.text
    error = assert_error(client.delete(f"/v1/files/{theirs['id']}", headers=rival), 409, "file_in_use", "id")
    assert created.json()["id"] not in error["message"] and "another team's suite" in error["message"]
