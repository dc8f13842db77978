"""Jobs: creation with validation, idempotency, one message after commit (none after a rollback), the
status table with compare-and-set, cancel, listing, events and the server-sent event stream."""

from __future__ import annotations

import copy
import itertools
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from app.auth.service import Scope, create_token
from app.jobs import service as jobs
from app.jobs.models import Job
from app.jobs.states import (
    ALLOWED_TRANSITIONS,
    TERMINAL_STATUSES,
    InvalidTransition,
    JobStatus,
    can_transition,
)
from app.main import create_app
from app.queue import TaskName
from app.settings import Settings

from .conftest import LiveServer, Tokens, drain_broker, make_suite, unique, upload
from .test_api_files import assert_error


def create(client: TestClient, headers: dict[str, str], body: dict[str, Any], key: str | None = None) -> Any:
    extra = {"Idempotency-Key": key} if key else {}
    return client.post("/v1/jobs", json=body, headers={**headers, **extra})


# --------------------------------------------------------------------------- creation


def test_create_job_stores_validated_stages_and_sends_one_message(
    client: TestClient, writer: dict[str, str], job_body: dict[str, Any], backend: Settings
) -> None:
    drain_broker(backend)
    response = create(client, writer, job_body)
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["id"].startswith("job_") and job["status"] == "validating"
    assert job["base"] == job_body["base"] and job["candidate_version_ids"] == []
    stage = job["stages"][0]
    assert stage["config"]["lora_rank"] == 8 and stage["config"]["max_steps"] == 4
    # "auto" resolved for 4 rows: LoRA learning rate 2e-4, batch = all 4 rows.
    assert stage["resolved"]["learning_rate"] == 2e-4 and stage["resolved"]["batch_size"] == 4
    assert stage["rows"] == 4
    assert drain_broker(backend) == [{"task": str(TaskName.VALIDATE_JOB), "args": [job["id"]]}]
    assert client.get(f"/v1/jobs/{job['id']}", headers=writer).json() == job


def test_base_can_be_an_alias(
    client: TestClient, writer: dict[str, str], promoter: dict[str, str], job_body: dict[str, Any]
) -> None:
    alias = unique("base")
    assert (
        client.put(f"/v1/aliases/{alias}", json={"version": job_body["base"]}, headers=promoter).status_code
        == 200
    )
    response = create(client, writer, {**job_body, "base": f"alias:{alias}"})
    assert response.status_code == 201, response.text
    assert response.json()["base"] == job_body["base"] and response.json()["base_ref"] == f"alias:{alias}"


def test_idempotency_key_replays_the_same_job(
    client: TestClient, writer: dict[str, str], job_body: dict[str, Any], backend: Settings
) -> None:
    key = unique("key")
    first = create(client, writer, job_body, key)
    assert first.status_code == 201 and "Idempotency-Replayed" not in first.headers
    # Key order and whitespace do not matter: the parsed body is hashed.
    reordered = json.loads(json.dumps(job_body, sort_keys=True))
    second = create(client, writer, reordered, key)
    assert second.status_code == 201 and second.headers["Idempotency-Replayed"] == "true"
    assert second.json()["id"] == first.json()["id"]
    other = copy.deepcopy(job_body)
    other["stages"][0]["hyperparameters"]["max_steps"] = 5
    assert_error(create(client, writer, other, key), 409, "idempotency_key_reused", "Idempotency-Key")


def test_idempotency_keys_are_per_token(
    client: TestClient, writer: dict[str, str], tokens: Tokens, job_body: dict[str, Any]
) -> None:
    key = unique("key")
    mine = create(client, writer, job_body, key).json()["id"]
    theirs = create(client, Tokens.header(tokens.admin), job_body, key).json()["id"]
    assert mine != theirs


def test_a_replay_of_a_job_still_validating_re_sends_its_message(
    client: TestClient, writer: dict[str, str], job_body: dict[str, Any], backend: Settings
) -> None:
    key = unique("key")
    job_id = create(client, writer, job_body, key).json()["id"]
    drain_broker(backend)  # as if the first message were lost
    assert create(client, writer, job_body, key).json()["id"] == job_id
    assert drain_broker(backend) == [{"task": "sdft.jobs.run", "args": [job_id]}]


def test_a_broker_outage_is_503_and_the_job_is_queued_on_replay(
    backend: Settings, client: TestClient, writer: dict[str, str], job_body: dict[str, Any]
) -> None:
    broken = create_app(backend.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"}))
    key = unique("key")
    with TestClient(broken) as broken_client:
        started = time.monotonic()
        response = create(broken_client, writer, job_body, key)
        assert time.monotonic() - started < 30
    broken.state.engine.dispose()
    error = assert_error(response, 503, "broker_unavailable", None)
    assert "retry the request with the same Idempotency-Key" in error["message"]
    drain_broker(backend)
    replay = create(client, writer, job_body, key)  # the healthy app: same job, now queued
    assert replay.headers["Idempotency-Replayed"] == "true" and replay.json()["status"] == "validating"
    assert drain_broker(backend) == [{"task": "sdft.jobs.run", "args": [replay.json()["id"]]}]


def test_a_rolled_back_request_sends_nothing(
    app: Any, db: sessionmaker[Session], job_body: dict[str, Any], tokens: Tokens, backend: Settings
) -> None:
    from app.auth.service import authenticate
    from app.jobs.schemas import JobCreate

    drain_broker(backend)
    session = app.state.sessionmaker()  # a request session: it carries the task producer
    principal = authenticate(session, tokens.writer)
    assert principal is not None
    job, _ = jobs.create_job(session, principal=principal, body=JobCreate.model_validate(job_body))
    session.rollback()
    session.execute(text("SELECT 1"))
    session.commit()  # a later commit of the same session must not send the rolled-back job's message
    session.close()
    assert drain_broker(backend) == []
    with db() as check:
        assert check.get(Job, job.id) is None


HYPERPARAMETER_CASES = [
    ({"foo": 1}, "stages[0].hyperparameters.foo", "unknown key"),
    ({"learning_rate": -1.0}, "stages[0].hyperparameters.learning_rate", "greater than 0"),
    ({"max_steps": "lots"}, "stages[0].hyperparameters.max_steps", "integer"),
    ({"method": "sft"}, "stages[0].hyperparameters.method", "set method on the stage"),
    # Rules across keys name the key to change, not "config".
    ({"teacher_template": "{question}"}, "stages[0].hyperparameters.teacher_template", "{demonstration}"),
    ({"support": "sampled_token"}, "stages[0].hyperparameters.support", "set divergence to 'reverse_kl'"),
]


@pytest.mark.parametrize(("hyperparameters", "param", "words"), HYPERPARAMETER_CASES)
def test_bad_hyperparameters_are_422_naming_the_key(
    client: TestClient,
    writer: dict[str, str],
    job_body: dict[str, Any],
    counts: Callable[[], dict[str, int]],
    backend: Settings,
    hyperparameters: dict[str, Any],
    param: str,
    words: str,
) -> None:
    drain_broker(backend)
    before = counts()
    body = copy.deepcopy(job_body)
    body["stages"][0]["hyperparameters"] = hyperparameters
    error = assert_error(create(client, writer, body), 422, "invalid_hyperparameters", param)
    assert words in error["message"]
    assert counts() == before and drain_broker(backend) == []


def test_every_hyperparameter_may_be_auto_or_omitted(
    client: TestClient, writer: dict[str, str], job_body: dict[str, Any]
) -> None:
    body = copy.deepcopy(job_body)
    body["stages"][0]["hyperparameters"] = dict.fromkeys(
        ("learning_rate", "batch_size", "epochs", "max_steps"), "auto"
    )
    assert create(client, writer, body).status_code == 201
    body["stages"][0]["hyperparameters"] = {}
    assert create(client, writer, body).status_code == 201


def _bad_bodies(
    job_body: dict[str, Any], demonstrations_suite_file: str
) -> list[tuple[str, dict[str, Any], int, str, str]]:
    def edit(path: str, value: Any) -> dict[str, Any]:
        body = copy.deepcopy(job_body)
        target: Any = body
        keys = path.split(".")
        for key in keys[:-1]:
            target = target[int(key)] if key.isdigit() else target[key]
        target[keys[-1]] = value
        return body

    two_stages = copy.deepcopy(job_body)
    two_stages["stages"].append(copy.deepcopy(job_body["stages"][0]))
    return [
        ("unknown base", edit("base", "mv_nope"), 404, "model_not_found", "base"),
        ("unknown alias", edit("base", "alias:nope"), 404, "alias_not_found", "base"),
        (
            "unknown file",
            edit("stages.0.training_file", "file_nope"),
            404,
            "file_not_found",
            "stages[0].training_file",
        ),
        (
            "wrong purpose",
            edit("stages.0.training_file", demonstrations_suite_file),
            422,
            "wrong_file_purpose",
            "stages[0].training_file",
        ),
        (
            "unknown suite",
            edit("stages.0.suites", ["suite_nope"]),
            404,
            "suite_not_found",
            "stages[0].suites[0]",
        ),
        (
            "unknown general suite",
            edit("general_suites", ["suite_nope"]),
            404,
            "suite_not_found",
            "general_suites[0]",
        ),
        ("no suites", edit("stages.0.suites", []), 422, "invalid_request", "stages[0].suites"),
        ("no stages", edit("stages", []), 422, "invalid_request", "stages"),
        ("unknown top-level field", edit("priority", 1), 422, "invalid_request", "priority"),
        ("unknown stage field", edit("stages.0.gpu", "a100"), 422, "invalid_request", "stages[0].gpu"),
        ("bad method", edit("stages.0.method", "dpo"), 422, "invalid_request", "stages[0].method"),
        ("bad skill name", edit("stages.0.skill", "../etc"), 422, "invalid_request", "stages[0].skill"),
        ("bad alias name", edit("auto_promote", "Prod Uction"), 422, "invalid_request", "auto_promote"),
        ("duplicate skill", two_stages, 422, "duplicate_skill", "stages[1].skill"),
    ]


def test_bad_job_bodies_are_4xx_and_write_nothing(
    client: TestClient,
    writer: dict[str, str],
    job_body: dict[str, Any],
    counts: Callable[[], dict[str, int]],
    backend: Settings,
) -> None:
    suite_file = upload(client, writer, '{"prompt": "q", "reference": "a"}\n', "regression_suite").json()[
        "id"
    ]
    drain_broker(backend)
    before = counts()
    for case, body, status, code, param in _bad_bodies(job_body, suite_file):
        response = create(client, writer, body)
        assert response.status_code == status, (case, response.text)
        error = response.json()["error"]
        assert (error["code"], error["param"]) == (code, param), (case, error)
    assert counts() == before
    assert drain_broker(backend) == []


def test_malformed_json_is_400(client: TestClient, writer: dict[str, str]) -> None:
    response = client.post(
        "/v1/jobs", content=b'{"base": ', headers={**writer, "Content-Type": "application/json"}
    )
    assert_error(response, 400, "invalid_json", None)
    for body in (b'{"base": "\xff"}', b'{"base": ' + b"1" * 5000 + b"}"):  # not UTF-8; too many digits
        response = client.post(
            "/v1/jobs", content=body, headers={**writer, "Content-Type": "application/json"}
        )
        assert_error(response, 400, "invalid_json", None)


# --------------------------------------------------------------------------- status table


def test_transition_table_every_pair() -> None:
    statuses = list(JobStatus)
    assert {
        JobStatus.SUCCEEDED,
        JobStatus.REJECTED,
        JobStatus.FAILED,
        JobStatus.CANCELLED,
    } == TERMINAL_STATUSES
    expected = {
        (JobStatus.VALIDATING, JobStatus.QUEUED),
        (JobStatus.QUEUED, JobStatus.RUNNING),
        (JobStatus.RUNNING, JobStatus.EVALUATING),
        (JobStatus.EVALUATING, JobStatus.RUNNING),
        (JobStatus.EVALUATING, JobStatus.SUCCEEDED),
        (JobStatus.EVALUATING, JobStatus.REJECTED),
    } | {
        (s, stop)
        for s in statuses
        if s not in TERMINAL_STATUSES
        for stop in (JobStatus.FAILED, JobStatus.CANCELLED)
    }
    for a, b in itertools.product(statuses, statuses):
        assert can_transition(a, b) == ((a, b) in expected), (a, b)
    assert set(ALLOWED_TRANSITIONS) == set(statuses)


def _new_job(client: TestClient, writer: dict[str, str], job_body: dict[str, Any]) -> str:
    return str(create(client, writer, job_body).json()["id"])


def test_advance_walks_a_job_to_success_with_compare_and_set(
    client: TestClient, writer: dict[str, str], job_body: dict[str, Any], db: sessionmaker[Session]
) -> None:
    job_id = _new_job(client, writer, job_body)
    path = [
        JobStatus.VALIDATING,
        JobStatus.QUEUED,
        JobStatus.RUNNING,
        JobStatus.EVALUATING,
        JobStatus.SUCCEEDED,
    ]
    for from_status, to_status in itertools.pairwise(path):
        with db.begin() as session:
            assert jobs.advance(session, job_id, from_status, to_status)
        with db.begin() as session:  # a second worker with the same stale view loses
            assert not jobs.advance(session, job_id, from_status, to_status)
    job = client.get(f"/v1/jobs/{job_id}", headers=writer).json()
    assert job["status"] == "succeeded" and job["started_at"] is not None and job["finished_at"] is not None
    events = client.get(f"/v1/jobs/{job_id}/events", params={"limit": 100}, headers=writer).json()["data"]
    moves = [e["data"]["to"] for e in reversed(events) if e["type"] == "status" and "to" in (e["data"] or {})]
    assert moves == ["queued", "running", "evaluating", "succeeded"]


def test_advance_refuses_moves_the_table_forbids(
    client: TestClient, writer: dict[str, str], job_body: dict[str, Any], db: sessionmaker[Session]
) -> None:
    job_id = _new_job(client, writer, job_body)
    with db.begin() as session, pytest.raises(InvalidTransition):
        jobs.advance(session, job_id, JobStatus.VALIDATING, JobStatus.SUCCEEDED)
    with db.begin() as session, pytest.raises(ValueError, match="cannot set"):
        jobs.advance(session, job_id, JobStatus.VALIDATING, JobStatus.QUEUED, status="running")


def test_progress_and_error_fields_show_on_the_job(
    client: TestClient, writer: dict[str, str], job_body: dict[str, Any], db: sessionmaker[Session]
) -> None:
    job_id = _new_job(client, writer, job_body)
    with db.begin() as session:
        assert jobs.advance(session, job_id, JobStatus.VALIDATING, JobStatus.QUEUED)
        assert jobs.advance(session, job_id, JobStatus.QUEUED, JobStatus.RUNNING, total_steps=4)
        assert jobs.update_progress(
            session, job_id, expected_status=JobStatus.RUNNING, step=2, metrics={"loss": 0.5}
        )
        assert not jobs.update_progress(session, job_id, expected_status=JobStatus.EVALUATING, step=3)
    job = client.get(f"/v1/jobs/{job_id}", headers=writer).json()
    assert (job["step"], job["total_steps"], job["metrics"]) == (2, 4, {"loss": 0.5})
    error = {"code": "out_of_memory", "message": "CUDA OOM at step 3", "param": None}
    with db.begin() as session:
        assert jobs.advance(session, job_id, JobStatus.RUNNING, JobStatus.FAILED, error=error)
    assert client.get(f"/v1/jobs/{job_id}", headers=writer).json()["error"] == error


def test_cancel(
    client: TestClient, writer: dict[str, str], reader: dict[str, str], job_body: dict[str, Any]
) -> None:
    job_id = _new_job(client, writer, job_body)
    assert_error(client.post(f"/v1/jobs/{job_id}/cancel", headers=reader), 403, "insufficient_scope", None)
    cancelled = client.post(f"/v1/jobs/{job_id}/cancel", headers=writer)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert_error(client.post(f"/v1/jobs/{job_id}/cancel", headers=writer), 409, "job_finished", "id")
    assert_error(client.post("/v1/jobs/job_nope/cancel", headers=writer), 404, "job_not_found", "id")


# --------------------------------------------------------------------------- listing


def test_list_jobs_pages_newest_first_and_filters(
    client: TestClient, writer: dict[str, str], job_body: dict[str, Any], db: sessionmaker[Session]
) -> None:
    ids = [_new_job(client, writer, job_body) for _ in range(3)]
    page = client.get("/v1/jobs", params={"limit": 2}, headers=writer).json()
    assert page["object"] == "list" and page["has_more"] is True
    assert (
        [j["id"] for j in page["data"]] == ids[::-1][:2]
        and page["first_id"] == ids[2]
        and page["last_id"] == ids[1]
    )
    following = client.get("/v1/jobs", params={"limit": 2, "after": page["last_id"]}, headers=writer).json()
    assert following["data"][0]["id"] == ids[0]
    with db.begin() as session:
        jobs.advance(session, ids[0], JobStatus.VALIDATING, JobStatus.QUEUED)
    queued = client.get("/v1/jobs", params={"status": "queued", "limit": 100}, headers=writer).json()["data"]
    assert ids[0] in [j["id"] for j in queued] and all(j["status"] == "queued" for j in queued)
    assert_error(
        client.get("/v1/jobs", params={"status": "sleeping"}, headers=writer),
        422,
        "invalid_request",
        "status",
    )
    assert_error(
        client.get("/v1/jobs", params={"limit": 101}, headers=writer), 422, "invalid_request", "limit"
    )
    # An empty cursor is an error, not an empty last page ("older than ''" matches nothing).
    assert_error(
        client.get("/v1/jobs", params={"after": ""}, headers=writer), 422, "invalid_request", "after"
    )


def test_events_page_newest_first(
    client: TestClient, writer: dict[str, str], job_body: dict[str, Any], db: sessionmaker[Session]
) -> None:
    job_id = _new_job(client, writer, job_body)
    with db.begin() as session:
        for i in range(3):
            jobs.append_event(
                session, job_id=job_id, level="info", type="metrics", message=f"step {i}", data={"step": i}
            )
    page = client.get(f"/v1/jobs/{job_id}/events", params={"limit": 2}, headers=writer).json()
    assert [e["message"] for e in page["data"]] == ["step 2", "step 1"] and page["has_more"]
    rest = client.get(f"/v1/jobs/{job_id}/events", params={"after": page["last_id"]}, headers=writer).json()
    assert [e["message"] for e in rest["data"]] == ["step 0", "job created; validating"]
    assert_error(
        client.get(f"/v1/jobs/{job_id}/events", params={"after": "evt_nope"}, headers=writer),
        404,
        "event_not_found",
        "after",
    )


# --------------------------------------------------------------------------- server-sent events


def read_stream(url: str, headers: dict[str, str]) -> list[tuple[str | None, str, dict[str, Any]]]:
    from app.client import _parse_sse

    with httpx.stream("GET", url, params={"stream": "true"}, headers=headers, timeout=30) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith(
            "text/event-stream"
        )
        return list(_parse_sse(response.iter_lines()))


def test_event_stream_follows_the_job_to_the_end(
    live_server: LiveServer,
    client: TestClient,
    writer: dict[str, str],
    job_body: dict[str, Any],
    db: sessionmaker[Session],
) -> None:
    job_id = _new_job(client, writer, job_body)

    def worker() -> None:  # what a Celery worker would do, while the client is streaming
        steps = [(JobStatus.VALIDATING, JobStatus.QUEUED), (JobStatus.QUEUED, JobStatus.RUNNING)]
        for from_status, to_status in steps:
            time.sleep(0.1)
            with db.begin() as session:
                jobs.advance(session, job_id, from_status, to_status)
        for step in range(3):
            time.sleep(0.1)
            with db.begin() as session:
                jobs.append_event(
                    session,
                    job_id=job_id,
                    level="info",
                    type="metrics",
                    message=f"step {step}",
                    data={"step": step},
                )
        with db.begin() as session:
            jobs.advance(
                session, job_id, JobStatus.RUNNING, JobStatus.FAILED, error={"code": "x", "message": "y"}
            )

    thread = threading.Thread(target=worker)
    thread.start()
    events = read_stream(f"{live_server.url}/v1/jobs/{job_id}/events", writer)
    thread.join()
    messages = [data.get("message") for _id, kind, data in events if kind != "end"]
    assert messages == [
        "job created; validating",
        "validating -> queued",
        "queued -> running",
        "step 0",
        "step 1",
        "step 2",
        "running -> failed",
    ]
    assert events[-1][1] == "end" and events[-1][2]["status"] == "failed"

    # Reconnecting with Last-Event-ID resumes after that event.
    third_id = events[2][0]
    assert third_id is not None
    resumed = read_stream(f"{live_server.url}/v1/jobs/{job_id}/events", {**writer, "Last-Event-ID": third_id})
    assert [d.get("message") for _i, k, d in resumed if k != "end"] == messages[3:]


def test_an_event_stream_ends_once_its_token_is_revoked(
    live_server: LiveServer,
    client: TestClient,
    admin: dict[str, str],
    db: sessionmaker[Session],
    job_body: dict[str, Any],
) -> None:
    with db.begin() as session:
        token, secret = create_token(session, name=unique("streamer"), scopes=[Scope.JOBS_WRITE])
    headers = Tokens.header(secret)
    job_id = _new_job(client, headers, job_body)
    kinds: list[str] = []
    started = time.monotonic()
    url = f"{live_server.url}/v1/jobs/{job_id}/events"
    with httpx.stream("GET", url, params={"stream": "true"}, headers=headers, timeout=30) as response:
        for line in response.iter_lines():
            if line.startswith("event: "):
                kinds.append(line.removeprefix("event: "))
                if len(kinds) > 1:
                    break
                # Revoked after the first event; the next one must never reach this client.
                assert client.delete(f"/v1/tokens/{token.id}", headers=admin).status_code == 200
                with db.begin() as session:
                    jobs.append_event(session, job_id=job_id, level="info", type="message", message="after")
            if time.monotonic() - started > 10:
                break
    # The job is still validating: before, the stream went on until sse_max_seconds.
    assert kinds == ["status"] and time.monotonic() - started < 10
    assert httpx.get(url, params={"stream": "true"}, headers=headers).status_code == 401


def test_events_commit_in_seq_order(
    client: TestClient, writer: dict[str, str], job_body: dict[str, Any], db: sessionmaker[Session]
) -> None:
    # The stream sends "seq > last sent": an event that took seq 1 and committed after seq 2 would never
    # be sent. A second appender waits for the first transaction instead (PostgreSQL row lock).
    job_id = _new_job(client, writer, job_body)
    first = db()
    first.begin()
    first_seq = jobs.append_event(session=first, job_id=job_id, level="info", type="message", message="a").seq
    second_seq: list[int] = []

    def second_appender() -> None:
        with db.begin() as session:
            event = jobs.append_event(session, job_id=job_id, level="info", type="message", message="b")
            second_seq.append(event.seq)

    thread = threading.Thread(target=second_appender)
    thread.start()
    thread.join(timeout=0.5)
    if db.kw["bind"].dialect.name == "postgresql":
        assert thread.is_alive() and not second_seq  # waiting for the first transaction's lock
    first.commit()
    first.close()
    thread.join(timeout=30)
    assert second_seq and second_seq[0] > first_seq


def test_event_stream_errors_before_streaming(
    client: TestClient, writer: dict[str, str], job_body: dict[str, Any]
) -> None:
    assert_error(
        client.get("/v1/jobs/job_nope/events?stream=true", headers=writer), 404, "job_not_found", "id"
    )
    job_id = _new_job(client, writer, job_body)
    response = client.get(
        f"/v1/jobs/{job_id}/events?stream=true", headers={**writer, "Last-Event-ID": "evt_nope"}
    )
    assert_error(response, 404, "event_not_found", "Last-Event-ID")


def test_a_job_can_use_several_suites_and_general_suites(
    client: TestClient, writer: dict[str, str], admin: dict[str, str], job_body: dict[str, Any]
) -> None:
    general = make_suite(client, writer)
    body = {**job_body, "general_suites": [general["id"]], "auto_promote": "production"}
    job = create(client, admin, body).json()  # auto_promote needs models:promote (admin has it)
    assert job["general_suites"] == [general["id"]] and job["auto_promote"] == "production"
