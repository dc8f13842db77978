"""Webhook delivery (workers/webhooks.py) against real receivers on 127.0.0.1: Standard Webhooks
signatures that the `standardwebhooks` library verifies, one send per event even when the task runs
twice at once, retries with backoff while the receiver fails (the retry is the task sent again with a
countdown), endpoints disabled after failures that last (and the job told) but not after a burst of
them in a short outage, a URL the worker cannot use recorded as a failed attempt, lost tasks re-sent by
the sweep, and nothing sent about a team's jobs to another team. The app and its databases are the API
tests' (SQLite and PostgreSQL); the app here lets webhooks reach loopback receivers."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import threading
import time
from dataclasses import asdict, fields
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from app.db import session_scope
from app.jobs import service as jobs
from app.jobs.states import JobStatus
from app.queue import TaskName
from app.settings import Settings
from app.webhooks import service as webhooks
from app.webhooks.models import WebhookDelivery, WebhookEndpoint, WebhookEvent
from app.webhooks.schemas import EventType
from app.webhooks.service import FailureStreak
from tests.app.api.conftest import unique
from tests.workers.webhooks.broker import broker_messages
from tests.workers.webhooks.receiver import receiving
from workers.webhooks import RetryPolicy, deliver, resend_lost_deliveries

FAST = RetryPolicy(
    backoff_seconds=1.0,
    backoff_max_seconds=2.0,
    retry_window_seconds=3600.0,
    max_consecutive_failures=20,
    timeout_seconds=5.0,
    allow_private=True,
)
# The sweep's grace period in its test: time passing is simulated (`age`), never waited for.
GRACE_SECONDS = 60.0


def closed_port() -> int:
    """A local port nobody listens on: connecting to it is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def subscribe(
    client: TestClient,
    headers: dict[str, str],
    url: str,
    endpoints: list[str],
    events: list[str] | None = None,
) -> dict[str, Any]:
    body = {"url": url, "events": events or ["job.status_changed"]}
    response = client.post("/v1/webhooks", json=body, headers=headers)
    assert response.status_code == 201, response.text
    endpoints.append(response.json()["id"])
    return dict(response.json())


def deliver_queued(app: FastAPI, settings: Settings, policy: RetryPolicy = FAST) -> list[str]:
    """What a worker of the default queue does: run every delivery task waiting in the broker."""
    outcomes = []
    for message in broker_messages(settings):
        if message["task"] == str(TaskName.DELIVER_WEBHOOK):
            outcomes.append(deliver(app.state.sessionmaker, message["args"][0], policy))
    return outcomes


def new_job(client: TestClient, headers: dict[str, str], body: dict[str, Any]) -> str:
    response = client.post("/v1/jobs", json=body, headers=headers)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def move(app: FastAPI, job_id: str, *steps: tuple[JobStatus, JobStatus]) -> None:
    """Status moves as the workers make them, in a session that sends its tasks after the commit."""
    for from_status, to_status in steps:
        with app.state.sessionmaker.begin() as session:
            assert jobs.advance(session, job_id, from_status, to_status)


def pending(db: sessionmaker[Session], endpoint_id: str) -> list[WebhookDelivery]:
    with db() as session:
        return list(
            session.scalars(
                select(WebhookDelivery)
                .where(WebhookDelivery.endpoint_id == endpoint_id)
                .order_by(WebhookDelivery.id)
            )
        )


def row(db: sessionmaker[Session], delivery_id: str) -> WebhookDelivery:
    with db() as session:
        found = session.get(WebhookDelivery, delivery_id)
        assert found is not None
        return found


def make_due(db: sessionmaker[Session], delivery_id: str) -> None:
    """The clock reaching a delivery's next attempt, without waiting for it."""
    with db.begin() as session:
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == delivery_id)
            .values(next_attempt_at=time.time())
        )


def age(db: sessionmaker[Session], delivery_id: str, seconds: float) -> None:
    """A delivery's due time and last task sent `seconds` further in the past, as if that time passed."""
    with db.begin() as session:
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == delivery_id)
            .values(
                next_attempt_at=WebhookDelivery.next_attempt_at - seconds,
                task_sent_at=WebhookDelivery.task_sent_at - seconds,
            )
        )


def failing_for(db: sessionmaker[Session], endpoint_id: str, seconds: float) -> None:
    """The endpoint's failures in a row started `seconds` earlier, as if that time passed."""
    with db.begin() as session:
        session.execute(
            update(WebhookEndpoint)
            .where(WebhookEndpoint.id == endpoint_id)
            .values(failing_since=WebhookEndpoint.failing_since - seconds)
        )


def spec_signature(secret: str, headers: dict[str, str], body: bytes) -> str:
    """The Standard Webhooks signature, computed here from the spec independently of app.webhooks."""
    key = base64.b64decode(secret.split("_", 1)[1])
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def test_a_delivery_is_signed_the_standard_webhooks_way_and_sent_once(
    app: FastAPI,
    client: TestClient,
    db: sessionmaker[Session],
    backend: Settings,
    writer: dict[str, str],
    job_body: dict[str, Any],
    endpoints: list[str],
) -> None:
    with receiving(delay=0.5) as receiver:
        endpoint = subscribe(client, writer, receiver.url, endpoints)
        job_id = new_job(client, writer, job_body)
        broker_messages(backend)
        assert client.post(f"/v1/jobs/{job_id}/cancel", headers=writer).status_code == 200
        [message] = broker_messages(backend)
        assert message["task"] == str(TaskName.DELIVER_WEBHOOK)
        delivery_id = message["args"][0]

        # The task delivered twice at once (a redelivered message): one POST.
        outcomes: list[str] = []
        threads = [
            threading.Thread(
                target=lambda: outcomes.append(deliver(app.state.sessionmaker, delivery_id, FAST))
            )
            for _ in range(2)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(outcomes) == ["delivered", "skipped"]
        # ... and once more after it was delivered: nothing.
        assert deliver(app.state.sessionmaker, delivery_id, FAST) == "skipped"
        assert len(receiver.received) == 1
        [received] = receiver.received

    payload = Webhook(endpoint["secret"]).verify(received.body, received.headers)
    assert payload["type"] == "job.status_changed"
    assert payload["data"] == {"job_id": job_id, "from": "validating", "to": "cancelled"}
    assert received.headers["webhook-id"] == payload["id"] == row(db, delivery_id).event_id
    assert received.headers["webhook-signature"] == spec_signature(
        endpoint["secret"], received.headers, received.body
    )
    assert received.headers["content-type"] == "application/json"
    assert abs(int(received.headers["webhook-timestamp"]) - time.time()) < 60
    with pytest.raises(WebhookVerificationError):
        Webhook(endpoint["secret"]).verify(
            received.body.replace(b"cancelled", b"succeeded"), received.headers
        )
    with pytest.raises(WebhookVerificationError):
        other_secret = "whsec_" + base64.b64encode(b"k" * 32).decode()
        Webhook(other_secret).verify(received.body, received.headers)

    [logged] = client.get(f"/v1/webhooks/{endpoint['id']}/deliveries", headers=writer).json()["data"]
    assert logged["status"] == "delivered" and logged["attempts"] == 1
    assert logged["last_status_code"] == 200 and logged["last_error"] is None
    assert logged["next_attempt_at"] is None and logged["delivered_at"] is not None


def test_a_failing_receiver_is_retried_with_backoff_until_it_answers(
    app: FastAPI,
    client: TestClient,
    db: sessionmaker[Session],
    backend: Settings,
    writer: dict[str, str],
    job_body: dict[str, Any],
    endpoints: list[str],
) -> None:
    # A backoff far longer than the test: "not due yet" holds however slow the machine is, and the
    # clock moving on is the row's due time moved to now.
    policy = RetryPolicy(**{**asdict(FAST), "backoff_seconds": 60.0, "backoff_max_seconds": 120.0})
    with receiving(statuses=[503, 500]) as receiver:
        endpoint = subscribe(client, writer, receiver.url, endpoints)
        job_id = new_job(client, writer, job_body)
        broker_messages(backend)
        move(app, job_id, (JobStatus.VALIDATING, JobStatus.QUEUED))
        [first] = broker_messages(backend)
        delivery_id = first["args"][0]

        started = time.time()
        assert deliver(app.state.sessionmaker, delivery_id, policy) == "retrying"
        finished = time.time()
        failed = row(db, delivery_id)
        assert (failed.status, failed.attempts, failed.last_status_code) == ("pending", 1, 503)
        assert failed.last_error == "HTTP 503"
        assert failed.next_attempt_at is not None
        assert started + 60.0 <= failed.next_attempt_at <= finished + 60.0
        # The retry is the same task sent again with a countdown (an ETA), after the outcome's commit.
        [retry] = broker_messages(backend)
        assert retry["task"] == str(TaskName.DELIVER_WEBHOOK) and retry["args"] == [delivery_id]
        assert retry["eta"] is not None
        # Before it is due, a task sends nothing.
        assert deliver(app.state.sessionmaker, delivery_id, policy) == "skipped"
        assert len(receiver.received) == 1

        make_due(db, delivery_id)
        started = time.time()
        assert deliver(app.state.sessionmaker, delivery_id, policy) == "retrying"
        finished = time.time()
        second = row(db, delivery_id)
        assert (second.attempts, second.last_status_code) == (2, 500)
        assert second.next_attempt_at is not None
        assert started + 120.0 <= second.next_attempt_at <= finished + 120.0  # doubled
        assert deliver(app.state.sessionmaker, delivery_id, policy) == "skipped"
        make_due(db, delivery_id)
        assert deliver(app.state.sessionmaker, delivery_id, policy) == "delivered"
        assert deliver(app.state.sessionmaker, delivery_id, policy) == "skipped"
        broker_messages(backend)

    assert len(receiver.received) == 3
    assert len(set(receiver.ids())) == 1  # one event id on every attempt
    for attempt in receiver.received:
        Webhook(endpoint["secret"]).verify(attempt.body, attempt.headers)
    done = row(db, delivery_id)
    assert (done.status, done.attempts, done.last_status_code, done.last_error) == ("delivered", 3, 200, None)
    with db() as session:
        shown = session.get(WebhookEndpoint, endpoint["id"])
        assert shown is not None and (shown.consecutive_failures, shown.failing_since) == (0, None)


def test_an_unreachable_receiver_is_an_error_to_retry(
    app: FastAPI,
    client: TestClient,
    db: sessionmaker[Session],
    backend: Settings,
    writer: dict[str, str],
    job_body: dict[str, Any],
    endpoints: list[str],
) -> None:
    port = closed_port()
    subscribe(client, writer, f"http://127.0.0.1:{port}/hook", endpoints)
    job_id = new_job(client, writer, job_body)
    move(app, job_id, (JobStatus.VALIDATING, JobStatus.QUEUED))
    [outcome] = deliver_queued(app, backend)
    assert outcome == "retrying"
    [delivery] = pending(db, endpoints[-1])
    assert delivery.status == "pending" and delivery.last_status_code is None
    assert delivery.last_error is not None and "ConnectError" in delivery.last_error
    broker_messages(backend)


def test_private_addresses_are_refused_when_delivering(
    app: FastAPI,
    client: TestClient,
    db: sessionmaker[Session],
    backend: Settings,
    writer: dict[str, str],
    job_body: dict[str, Any],
    endpoints: list[str],
) -> None:
    strict = RetryPolicy(**{**asdict(FAST), "allow_private": False})
    with receiving() as receiver:
        subscribe(client, writer, receiver.url, endpoints)
        job_id = new_job(client, writer, job_body)
        move(app, job_id, (JobStatus.VALIDATING, JobStatus.QUEUED))
        assert deliver_queued(app, backend, strict) == ["retrying"]
        assert receiver.received == []
    [delivery] = pending(db, endpoints[-1])
    assert delivery.last_error is not None and "127.0.0.1" in delivery.last_error
    broker_messages(backend)


def test_an_endpoint_failing_too_often_is_disabled_and_its_jobs_are_told(
    app: FastAPI,
    client: TestClient,
    db: sessionmaker[Session],
    backend: Settings,
    writer: dict[str, str],
    job_body: dict[str, Any],
    endpoints: list[str],
) -> None:
    # 3 failures in a row disable an endpoint once they span 30 + 60 s (one delivery's 3 attempts).
    policy = RetryPolicy(
        **{**asdict(FAST), "backoff_seconds": 30, "backoff_max_seconds": 60, "max_consecutive_failures": 3}
    )
    with receiving(default=500) as receiver:
        endpoint = subscribe(client, writer, receiver.url, endpoints)
        job_id = new_job(client, writer, job_body)
        move(app, job_id, (JobStatus.VALIDATING, JobStatus.QUEUED), (JobStatus.QUEUED, JobStatus.RUNNING))
        broker_messages(backend)
        first, second = (d.id for d in pending(db, endpoint["id"]))
        assert deliver(app.state.sessionmaker, first, policy) == "retrying"
        assert deliver(app.state.sessionmaker, second, policy) == "retrying"
        make_due(db, first)
        assert deliver(app.state.sessionmaker, first, policy) == "retrying"  # 3 in a row, within a second
        failing_for(db, endpoint["id"], policy.failing_seconds)  # ... and the outage went on
        make_due(db, second)
        assert deliver(app.state.sessionmaker, second, policy) == "disabled"
        assert deliver(app.state.sessionmaker, first, policy) == "skipped"
        assert len(receiver.received) == 4

        shown = client.get(f"/v1/webhooks/{endpoint['id']}", headers=writer).json()
        assert shown["status"] == "disabled" and shown["disabled_at"] is not None
        assert shown["disabled_reason"] == "3 deliveries failed in a row"
        log = client.get(f"/v1/webhooks/{endpoint['id']}/deliveries", headers=writer).json()["data"]
        assert [d["status"] for d in log] == ["failed", "failed"]
        assert all(d["next_attempt_at"] is None for d in log)
        events = client.get(f"/v1/jobs/{job_id}/events", headers=writer).json()["data"]
        [told] = [e for e in events if e["type"] == "webhook"]
        assert told["level"] == "warn" and endpoint["id"] in told["message"]
        assert told["data"] == {"webhook_id": endpoint["id"], "reason": "3 deliveries failed in a row"}

        # A disabled endpoint hears nothing more.
        assert client.post(f"/v1/jobs/{job_id}/cancel", headers=writer).status_code == 200
        assert len(pending(db, endpoint["id"])) == 2
        assert set(deliver_queued(app, backend, policy)) == {"skipped"}  # the earlier retries' tasks
        assert len(receiver.received) == 4


def test_a_burst_of_events_during_a_short_outage_disables_nothing(
    app: FastAPI,
    client: TestClient,
    db: sessionmaker[Session],
    backend: Settings,
    writer: dict[str, str],
    endpoints: list[str],
) -> None:
    # 20 events while the receiver is down: 20 first attempts fail in a row within a second. The default
    # policy retries them all (it disables an endpoint once such a streak lasts about 13 h).
    port = closed_port()
    endpoint = subscribe(client, writer, f"http://127.0.0.1:{port}/hook", endpoints)
    with session_scope(db) as session:
        team = session.get(WebhookEndpoint, endpoint["id"]).team  # type: ignore[union-attr]
        for i in range(20):
            data = {"job_id": f"job_burst_{i}", "from": "running", "to": "cancelled"}
            webhooks.record_event(session, type=EventType.JOB_STATUS_CHANGED, data=data, team=team)
    policy = RetryPolicy(allow_private=True)
    outcomes = [deliver(app.state.sessionmaker, d.id, policy) for d in pending(db, endpoint["id"])]
    assert outcomes == ["retrying"] * 20
    assert client.get(f"/v1/webhooks/{endpoint['id']}", headers=writer).json()["status"] == "enabled"
    assert {d.status for d in pending(db, endpoint["id"])} == {"pending"}
    with db() as session:
        shown = session.get(WebhookEndpoint, endpoint["id"])
        assert shown is not None and shown.consecutive_failures == 20 and shown.failing_since is not None
    broker_messages(backend)


def test_a_url_the_worker_cannot_use_is_a_failed_attempt_to_retry(
    app: FastAPI,
    client: TestClient,
    db: sessionmaker[Session],
    backend: Settings,
    writer: dict[str, str],
    job_body: dict[str, Any],
    endpoints: list[str],
) -> None:
    # An endpoint created before URLs were checked as they are now: resolving this host raises
    # UnicodeError (no OSError), which once escaped the task and left the delivery claimed, unrecorded.
    endpoint = subscribe(client, writer, "http://hooks.example.com/hook", endpoints)
    with db.begin() as session:
        session.execute(
            update(WebhookEndpoint)
            .where(WebhookEndpoint.id == endpoint["id"])
            .values(url="http://hooks..example.com/hook")
        )
    job_id = new_job(client, writer, job_body)
    move(app, job_id, (JobStatus.VALIDATING, JobStatus.QUEUED))
    assert deliver_queued(app, backend) == ["retrying"]
    [delivery] = pending(db, endpoint["id"])
    assert (delivery.status, delivery.attempts, delivery.claimed_until) == ("pending", 1, None)
    assert delivery.last_error == "'hooks..example.com' is not a valid host name"
    assert [m["args"] for m in broker_messages(backend)] == [[delivery.id]]  # the retry


def test_an_event_undelivered_past_the_retry_window_disables_the_endpoint(
    app: FastAPI,
    client: TestClient,
    db: sessionmaker[Session],
    backend: Settings,
    writer: dict[str, str],
    job_body: dict[str, Any],
    endpoints: list[str],
) -> None:
    with receiving(default=502) as receiver:
        endpoint = subscribe(client, writer, receiver.url, endpoints)
        job_id = new_job(client, writer, job_body)
        move(app, job_id, (JobStatus.VALIDATING, JobStatus.QUEUED))
        [delivery] = pending(db, endpoint["id"])
        with db.begin() as session:  # the event happened two days ago
            session.execute(
                update(WebhookEvent)
                .where(WebhookEvent.id == delivery.event_id)
                .values(created_at=WebhookEvent.created_at - 2 * 24 * 3600)
            )
        policy = RetryPolicy(**{**asdict(FAST), "retry_window_seconds": 24 * 3600.0})
        assert deliver_queued(app, backend, policy) == ["disabled"]
        assert len(receiver.received) == 1
    shown = client.get(f"/v1/webhooks/{endpoint['id']}", headers=writer).json()
    assert shown["status"] == "disabled" and "undelivered" in shown["disabled_reason"]


def test_another_teams_endpoint_hears_nothing_about_this_teams_jobs(
    app: FastAPI,
    client: TestClient,
    backend: Settings,
    writer: dict[str, str],
    rival: dict[str, str],
    promoter: dict[str, str],
    base_model: dict[str, Any],
    job_body: dict[str, Any],
    endpoints: list[str],
) -> None:
    events = ["job.status_changed", "version.registered", "alias.moved"]
    with receiving() as ours, receiving() as theirs:
        subscribe(client, writer, ours.url, endpoints, events)
        subscribe(client, rival, theirs.url, endpoints, events)
        broker_messages(backend)
        job_id = new_job(client, writer, job_body)
        move(app, job_id, (JobStatus.VALIDATING, JobStatus.QUEUED), (JobStatus.QUEUED, JobStatus.RUNNING))
        assert client.post(f"/v1/jobs/{job_id}/cancel", headers=writer).status_code == 200
        assert deliver_queued(app, backend) == ["delivered"] * 3
        assert [json.loads(r.body)["data"]["to"] for r in ours.received] == ["queued", "running", "cancelled"]
        assert theirs.received == []
        # Alias moves are everyone's news.
        alias = unique("wh-team")
        assert client.put(
            f"/v1/aliases/{alias}", json={"version": base_model["id"]}, headers=promoter
        ).is_success
        assert deliver_queued(app, backend) == ["delivered"] * 2
        assert len(ours.received) == 4 and len(theirs.received) == 1
        assert ours.received[-1].headers["webhook-id"] == theirs.received[0].headers["webhook-id"]
        assert json.loads(theirs.received[0].body)["data"]["alias"] == alias


def test_lost_tasks_are_sent_again_by_the_sweep(
    app: FastAPI,
    client: TestClient,
    db: sessionmaker[Session],
    backend: Settings,
    writer: dict[str, str],
    job_body: dict[str, Any],
    endpoints: list[str],
) -> None:
    with receiving() as receiver:
        endpoint = subscribe(client, writer, receiver.url, endpoints)
        job_id = new_job(client, writer, job_body)
        broker_messages(backend)
        with db.begin() as session:  # a session without a task producer: the event's task never leaves
            assert jobs.advance(session, job_id, JobStatus.VALIDATING, JobStatus.QUEUED)
        assert broker_messages(backend) == []
        [delivery] = pending(db, endpoint["id"])

        producer = app.state.producer
        age(db, delivery.id, GRACE_SECONDS + 1)
        with db.begin() as session:
            assert resend_lost_deliveries(session, producer, grace_seconds=GRACE_SECONDS) == [delivery.id]
        with db.begin() as session:  # sent once per grace period, by one sweeper
            assert resend_lost_deliveries(session, producer, grace_seconds=GRACE_SECONDS) == []
        assert [m["args"] for m in broker_messages(backend)] == [[delivery.id]]

        # In flight (claimed by a worker still POSTing): not lost.
        age(db, delivery.id, GRACE_SECONDS + 1)
        with db.begin() as session:
            assert webhooks.claim(session, delivery.id, at=time.time(), hold_seconds=600) is not None
        with db.begin() as session:
            assert resend_lost_deliveries(session, producer, grace_seconds=GRACE_SECONDS) == []
        with db.begin() as session:  # that worker died: its claim expires, and the delivery is lost again
            session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id == delivery.id)
                .values(claimed_until=time.time() - 1)
            )
        with db.begin() as session:
            assert resend_lost_deliveries(session, producer, grace_seconds=GRACE_SECONDS) == [delivery.id]
        assert deliver_queued(app, backend) == ["delivered"]
        age(db, delivery.id, GRACE_SECONDS + 1)
        with db.begin() as session:
            assert resend_lost_deliveries(session, producer, grace_seconds=GRACE_SECONDS) == []
        assert len(receiver.received) == 1


def test_the_retry_policy() -> None:
    policy = RetryPolicy()
    assert [policy.delay(n) for n in range(1, 10)] == [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]
    # Failures in a row disable an endpoint once they are 20 and last as long as one delivery's 20
    # attempts: about 13 hours, before its first undelivered event is a day old.
    assert policy.failing_seconds == sum(policy.delay(n) for n in range(1, 20))
    assert 12 * 3600 < policy.failing_seconds < 24 * 3600
    now = time.time()
    long_ago = now - policy.failing_seconds
    assert policy.give_up_reason(FailureStreak(19, long_ago), None, now) is None
    assert policy.give_up_reason(FailureStreak(200, now - 60), None, now) is None  # a burst
    assert policy.give_up_reason(FailureStreak(20, long_ago), None, now) == "20 deliveries failed in a row"
    assert policy.give_up_reason(FailureStreak(1, now), int(now) - 3600, now) is None
    assert "undelivered" in str(policy.give_up_reason(FailureStreak(1, now), int(now) - 25 * 3600, now))


def test_the_delivery_task_is_registered_on_the_default_queue() -> None:
    from app.queue import TASK_QUEUES
    from workers.celery_app import app as celery_app
    from workers.tasks import deliver_webhook_task

    assert deliver_webhook_task.name == "sdft.webhooks.deliver" == str(TaskName.DELIVER_WEBHOOK)
    assert TASK_QUEUES[TaskName.DELIVER_WEBHOOK] == "default"
    assert str(TaskName.DELIVER_WEBHOOK) in celery_app.tasks


def test_the_metrics_csv_has_a_column_for_every_step_metric() -> None:
    from app.jobs.router import METRICS_CSV_COLUMNS
    from workers.training.loop import StepMetrics

    assert {f.name for f in fields(StepMetrics)} | {"stage", "skill"} == set(METRICS_CSV_COLUMNS)
    assert len(METRICS_CSV_COLUMNS) == len(set(METRICS_CSV_COLUMNS))
