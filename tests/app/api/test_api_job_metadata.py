"""Job metadata (a string map set on create, validated, filtered with `?metadata[key]=value`) and a
job's per-step metrics as JSONL or CSV (its results file)."""

from __future__ import annotations

import copy
import csv
import io
import json
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.db import session_scope
from app.jobs import service as jobs
from app.jobs.router import METRICS_CSV_COLUMNS

from .conftest import unique
from .test_api_files import assert_error


def create(
    client: TestClient, headers: dict[str, str], body: dict[str, Any], **metadata: str
) -> dict[str, Any]:
    response = client.post("/v1/jobs", json={**body, "metadata": metadata}, headers=headers)
    assert response.status_code == 201, response.text
    return dict(response.json())


def listed(client: TestClient, headers: dict[str, str], **filters: str) -> list[str]:
    params = {f"metadata[{k}]": v for k, v in filters.items()} | {"limit": "100"}
    response = client.get("/v1/jobs", params=params, headers=headers)
    assert response.status_code == 200, response.text
    return [job["id"] for job in response.json()["data"]]


def test_metadata_is_stored_returned_and_filtered(
    client: TestClient, writer: dict[str, str], admin: dict[str, str], job_body: dict[str, Any]
) -> None:
    run = unique("run")
    first = create(client, writer, job_body, run=run, ticket="ML-1", note="a b: c")
    second = create(client, writer, job_body, run=run, ticket="ML-2")
    plain = create(client, writer, job_body)
    assert first["metadata"] == {"run": run, "ticket": "ML-1", "note": "a b: c"}
    assert plain["metadata"] == {}
    assert client.get(f"/v1/jobs/{first['id']}", headers=writer).json()["metadata"] == first["metadata"]

    assert listed(client, writer, run=run) == [second["id"], first["id"]]
    assert listed(client, writer, run=run, ticket="ML-1") == [first["id"]]
    assert listed(client, writer, run=run, ticket="ML-3") == []
    assert listed(client, writer, note="a b: c") == [first["id"]]
    assert listed(client, writer, nothing="x") == []
    # Filters combine with the others.
    by_status = client.get(
        "/v1/jobs", params={"metadata[run]": run, "status": "validating"}, headers=writer
    ).json()["data"]
    assert {job["id"] for job in by_status} == {first["id"], second["id"]}


def test_metadata_filters_stay_within_the_team(
    client: TestClient, writer: dict[str, str], rival: dict[str, str], job_body: dict[str, Any]
) -> None:
    run = unique("shared")
    mine = create(client, writer, job_body, run=run)
    assert listed(client, rival, run=run) == []
    assert listed(client, writer, run=run) == [mine["id"]]


LONG_KEY = "k" * 65
BAD_METADATA = [
    ({f"k{i}": "v" for i in range(17)}, "metadata"),
    ({LONG_KEY: "v"}, "metadata"),
    ({"with space": "v"}, "metadata"),
    ({"-leading": "v"}, "metadata"),
    ({"": "v"}, "metadata"),
    ({"ticket": "x" * 513}, "metadata.ticket"),
    ({"ticket": 5}, "metadata.ticket"),
    ({"ticket": None}, "metadata.ticket"),
    (["ticket"], "metadata"),
    ("ticket", "metadata"),
]


@pytest.mark.parametrize(("metadata", "param"), BAD_METADATA)
def test_bad_metadata_is_a_clear_422(
    client: TestClient,
    writer: dict[str, str],
    job_body: dict[str, Any],
    counts: Callable[[], dict[str, int]],
    metadata: Any,
    param: str,
) -> None:
    before = counts()
    response = client.post("/v1/jobs", json={**job_body, "metadata": metadata}, headers=writer)
    error = assert_error(response, 422, "invalid_metadata", param)
    assert "metadata" in error["message"]
    assert counts() == before


def test_the_limits_themselves_are_accepted(
    client: TestClient, writer: dict[str, str], job_body: dict[str, Any]
) -> None:
    metadata = {f"k{i:02d}" + "x" * 61: "v" * 512 for i in range(16)}
    assert all(len(key) == 64 for key in metadata)
    job = create(client, writer, job_body, **metadata)
    assert job["metadata"] == metadata


def test_bad_metadata_filters_are_422(client: TestClient, writer: dict[str, str]) -> None:
    response = client.get("/v1/jobs", params={"metadata[bad key]": "x"}, headers=writer)
    assert_error(response, 422, "invalid_metadata", "metadata[bad key]")
    response = client.get("/v1/jobs", params={"metadata[k]": "x" * 513}, headers=writer)
    assert_error(response, 422, "invalid_metadata", "metadata[k]")
    response = client.get("/v1/jobs", params=[("metadata[k]", "a"), ("metadata[k]", "b")], headers=writer)
    assert_error(response, 422, "invalid_metadata", "metadata[k]")


def test_an_idempotent_replay_compares_metadata_too(
    client: TestClient, writer: dict[str, str], job_body: dict[str, Any]
) -> None:
    key = unique("idem")
    body = {**job_body, "metadata": {"a": "1"}}
    first = client.post("/v1/jobs", json=body, headers={**writer, "Idempotency-Key": key})
    again = client.post("/v1/jobs", json=body, headers={**writer, "Idempotency-Key": key})
    assert again.headers.get("Idempotency-Replayed") == "true" and again.json()["id"] == first.json()["id"]
    changed = {**job_body, "metadata": {"a": "2"}}
    response = client.post("/v1/jobs", json=changed, headers={**writer, "Idempotency-Key": key})
    assert_error(response, 409, "idempotency_key_reused", "Idempotency-Key")


def _step(stage: int, step: int, loss: float, **extra: Any) -> dict[str, Any]:
    return {
        "stage": stage,
        "skill": f"skill-{stage}",
        "step": step,
        "total_steps": 2,
        "method": "sdft",
        "loss": loss,
        "learning_rate": 1e-4,
        "grad_norm": 0.5,
        "loss_parts": {"distill": loss},
        "importance_weight_mean": None,
        "learning_stalled": False,
        **extra,
    }


def test_metrics_are_one_row_per_step_in_step_order(
    client: TestClient,
    db: sessionmaker[Session],
    writer: dict[str, str],
    rival: dict[str, str],
    job_body: dict[str, Any],
) -> None:
    job_id = create(client, writer, job_body)["id"]
    empty = client.get(f"/v1/jobs/{job_id}/metrics", params={"format": "csv"}, headers=writer)
    assert empty.text.splitlines() == [",".join(METRICS_CSV_COLUMNS)]
    logged = [
        _step(0, 1, 2.0),
        _step(0, 2, 1.5),
        _step(0, 2, 1.4),  # the step redone after a resume: its last values count
        _step(1, 1, 0.9, probe_divergence=0.25, extra_key="kept in jsonl"),
        _step(1, 2, 0.8, learning_stalled=True),
    ]
    with session_scope(db) as session:
        jobs.append_event(session, job_id=job_id, level="info", type="message", message="not a step")
        for data in logged:
            jobs.append_event(session, job_id=job_id, level="info", type="metrics", message="step", data=data)

    response = client.get(f"/v1/jobs/{job_id}/metrics", headers=writer)
    assert response.status_code == 200 and response.headers["content-type"] == "application/jsonl"
    rows = [json.loads(line) for line in response.text.splitlines()]
    assert [(r["stage"], r["step"], r["loss"]) for r in rows] == [
        (0, 1, 2.0),
        (0, 2, 1.4),
        (1, 1, 0.9),
        (1, 2, 0.8),
    ]
    assert rows[2]["extra_key"] == "kept in jsonl"

    response = client.get(f"/v1/jobs/{job_id}/metrics", params={"format": "csv"}, headers=writer)
    assert response.headers["content-type"].startswith("text/csv")
    assert f"{job_id}-metrics.csv" in response.headers["content-disposition"]
    table = list(csv.DictReader(io.StringIO(response.text)))
    assert list(table[0]) == list(METRICS_CSV_COLUMNS)  # a stable column set, whatever was logged
    assert [(r["stage"], r["step"], r["loss"]) for r in table] == [
        ("0", "1", "2.0"),
        ("0", "2", "1.4"),
        ("1", "1", "0.9"),
        ("1", "2", "0.8"),
    ]
    assert table[2]["probe_divergence"] == "0.25" and table[0]["probe_divergence"] == ""
    assert table[0]["loss_parts"] == '{"distill":2.0}' and table[0]["importance_weight_mean"] == ""
    assert [r["learning_stalled"] for r in table] == ["false", "false", "false", "true"]

    assert_error(client.get(f"/v1/jobs/{job_id}/metrics", headers=rival), 404, "job_not_found", "id")
    response = client.get(f"/v1/jobs/{job_id}/metrics", params={"format": "xml"}, headers=writer)
    assert_error(response, 422, "invalid_request", "format")


def test_metadata_is_optional_in_old_style_bodies(
    client: TestClient, writer: dict[str, str], job_body: dict[str, Any]
) -> None:
    body = copy.deepcopy(job_body)
    body.pop("metadata", None)
    response = client.post("/v1/jobs", json=body, headers=writer)
    assert response.status_code == 201 and response.json()["metadata"] == {}
