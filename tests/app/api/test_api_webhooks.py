"""Webhooks over the API: endpoints per team (secret shown once, another team's answers 404), input
rules, and the outbox: an event is written in the transaction of the change it describes, to the
subscribed endpoints of the right teams, and its delivery task leaves only after the commit; an
endpoint deleted meanwhile takes its delivery with it. (Delivering, signing and retrying:
tests/workers/webhooks/ and tests/workers/jobs/test_webhooks_e2e.py.)"""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from httpx import Response
from sqlalchemy import event, select
from sqlalchemy.orm import Session, sessionmaker

from app.auth.service import Principal, Scope, create_token
from app.db import session_scope
from app.jobs import service as jobs
from app.jobs.states import JobStatus
from app.queue import TaskName
from app.registry import service as registry
from app.settings import Settings
from app.webhooks import service as webhooks
from app.webhooks.models import WebhookDelivery, WebhookEndpoint, WebhookEvent
from app.webhooks.schemas import EventType, WebhookCreate

from .conftest import Tokens, demonstration_lines, drain_broker, make_suite, unique, upload
from .test_api_files import assert_error

PUBLIC_URL = "https://hooks.example.com/sdft"


def team_token(db: sessionmaker[Session], team: str, scopes: list[Scope]) -> dict[str, str]:
    with session_scope(db) as session:
        _token, secret = create_token(session, name=f"test-{team}", scopes=scopes, team=team)
    return Tokens.header(secret)


@pytest.fixture()
def teams(db: sessionmaker[Session]) -> tuple[dict[str, str], dict[str, str]]:
    """jobs:write tokens of two fresh teams."""
    return (
        team_token(db, unique("team-a"), [Scope.JOBS_WRITE]),
        team_token(db, unique("team-b"), [Scope.JOBS_WRITE]),
    )


@pytest.fixture()
def cleanup(client: TestClient, admin: dict[str, str]) -> Iterator[list[str]]:
    """Ids of endpoints to delete after the test: the database is shared with the other API tests,
    whose alias moves and cancellations must not grow deliveries here."""
    created: list[str] = []
    yield created
    for endpoint_id in created:
        client.delete(f"/v1/webhooks/{endpoint_id}", headers=admin)


def create_webhook(
    client: TestClient, headers: dict[str, str], cleanup: list[str], events: list[str], **body: Any
) -> dict[str, Any]:
    response = client.post(
        "/v1/webhooks", json={"url": PUBLIC_URL, "events": events, **body}, headers=headers
    )
    assert response.status_code == 201, response.text
    cleanup.append(response.json()["id"])
    return dict(response.json())


def deliveries(client: TestClient, headers: dict[str, str], endpoint_id: str) -> list[dict[str, Any]]:
    response = client.get(f"/v1/webhooks/{endpoint_id}/deliveries", headers=headers)
    assert response.status_code == 200, response.text
    return list(response.json()["data"])


def test_an_endpoint_belongs_to_its_team_and_its_secret_is_shown_once(
    client: TestClient,
    teams: tuple[dict[str, str], dict[str, str]],
    admin: dict[str, str],
    reader: dict[str, str],
    cleanup: list[str],
) -> None:
    mine, other = teams
    created = create_webhook(
        client, mine, cleanup, ["job.status_changed", "alias.moved", "job.status_changed"], description="ci"
    )
    assert created["id"].startswith("wh_") and created["object"] == "webhook"
    assert created["events"] == ["job.status_changed", "alias.moved"]  # duplicates dropped
    assert created["status"] == "enabled" and created["description"] == "ci"
    assert created["secret"].startswith("whsec_")
    assert len(base64.b64decode(created["secret"].removeprefix("whsec_"))) == 32
    endpoint_id = created["id"]

    shown = client.get(f"/v1/webhooks/{endpoint_id}", headers=mine).json()
    assert "secret" not in shown and shown == {k: v for k, v in created.items() if k != "secret"}
    assert endpoint_id in [e["id"] for e in client.get("/v1/webhooks", headers=mine).json()["data"]]
    assert endpoint_id in [
        e["id"] for e in client.get("/v1/webhooks", params={"limit": 100}, headers=admin).json()["data"]
    ]
    assert endpoint_id not in [e["id"] for e in client.get("/v1/webhooks", headers=other).json()["data"]]
    assert deliveries(client, mine, endpoint_id) == []

    # Another team's endpoint does not exist for it.
    assert_error(client.get(f"/v1/webhooks/{endpoint_id}", headers=other), 404, "webhook_not_found", "id")
    assert_error(client.delete(f"/v1/webhooks/{endpoint_id}", headers=other), 404, "webhook_not_found", "id")
    assert_error(
        client.get(f"/v1/webhooks/{endpoint_id}/deliveries", headers=other), 404, "webhook_not_found", "id"
    )
    # Creating and deleting need jobs:write.
    body = {"url": PUBLIC_URL, "events": ["alias.moved"]}
    assert_error(client.post("/v1/webhooks", json=body, headers=reader), 403, "insufficient_scope", None)
    assert_error(
        client.delete(f"/v1/webhooks/{endpoint_id}", headers=reader), 403, "insufficient_scope", None
    )

    deleted = client.delete(f"/v1/webhooks/{endpoint_id}", headers=mine)
    assert deleted.json() == {"id": endpoint_id, "object": "webhook", "deleted": True}
    assert_error(client.get(f"/v1/webhooks/{endpoint_id}", headers=mine), 404, "webhook_not_found", "id")


BAD_WEBHOOKS = [
    ({"url": "ftp://hooks.example.com/x"}, "invalid_request", "url"),
    ({"url": "http://user:secret@hooks.example.com/x"}, "invalid_url", "url"),
    ({"url": "https://hooks.example.com/x#part"}, "invalid_url", "url"),
    ({"url": "http://:8080/x"}, "invalid_url", "url"),
    ({"url": "http://hooks.example.com:99999/x"}, "invalid_url", "url"),
    ({"url": "http://127.0.0.1:9000/x"}, "private_url", "url"),
    ({"url": "http://localhost/x"}, "private_url", "url"),
    ({"url": "http://[::1]/x"}, "private_url", "url"),
    ({"url": "http://10.1.2.3/x"}, "private_url", "url"),
    ({"url": "http://169.254.169.254/latest/meta-data"}, "private_url", "url"),
    # A host the worker could not resolve (an empty label) or would read as another address.
    ({"url": "http://hooks..example.com/x"}, "invalid_url", "url"),
    ({"url": "http://-hooks.example.com/x"}, "invalid_url", "url"),
    ({"url": "http://ｌｏｃａｌｈｏｓｔ/x"}, "invalid_url", "url"),
    ({"url": "http://2130706433/x"}, "invalid_url", "url"),
    ({"url": "http://0177.0.0.1/x"}, "invalid_url", "url"),
    ({"url": "http://127.1/x"}, "invalid_url", "url"),
    ({"url": "http://0x7f.1/x"}, "invalid_url", "url"),
    ({"url": "http://0/x"}, "invalid_url", "url"),
    # IPv6 addresses reaching a private IPv4 one: NAT64, 6to4, IPv4-compatible, IPv4-mapped.
    ({"url": "http://[64:ff9b::a9fe:a9fe]/x"}, "private_url", "url"),
    ({"url": "http://[2002:a9fe:a9fe::1]/x"}, "private_url", "url"),
    ({"url": "http://[::127.0.0.1]/x"}, "private_url", "url"),
    ({"url": "http://[::ffff:127.0.0.1]/x"}, "private_url", "url"),
    ({"events": []}, "invalid_request", "events"),
    ({"events": ["job.created"]}, "invalid_request", "events[0]"),
    ({"description": "x" * 501}, "invalid_request", "description"),
    ({"secret": "whsec_mine"}, "invalid_request", "secret"),
]


def test_two_creates_racing_for_a_teams_last_webhook_cannot_both_win(
    client: TestClient, db: sessionmaker[Session], cleanup: list[str]
) -> None:
    # The limit is a count of rows that may not be committed yet: the second create waits for the
    # first (PostgreSQL advisory lock; SQLite serialises writers) and then sees 20.
    team = unique("team-full")
    with session_scope(db) as session:
        token, secret = create_token(session, name="race", scopes=[Scope.JOBS_WRITE], team=team)
    headers = Tokens.header(secret)
    for _ in range(webhooks.MAX_ENDPOINTS_PER_TEAM - 1):
        create_webhook(client, headers, cleanup, ["alias.moved"])
    first = db()
    first.begin()
    principal = Principal(token_id=token.id, name="race", scopes=frozenset({Scope.JOBS_WRITE}), team=team)
    body = WebhookCreate(url=PUBLIC_URL, events=[EventType.ALIAS_MOVED])
    cleanup.append(webhooks.create_endpoint(first, principal=principal, body=body, allow_private=False).id)
    second: list[Response] = []
    thread = threading.Thread(
        target=lambda: second.append(
            client.post("/v1/webhooks", json={"url": PUBLIC_URL, "events": ["alias.moved"]}, headers=headers)
        )
    )
    thread.start()
    thread.join(timeout=0.5)
    first.commit()
    first.close()
    thread.join(timeout=30)
    assert second and second[0].status_code == 409, second[0].text if second else "no answer"
    assert second[0].json()["error"]["code"] == "too_many_webhooks"
    listed = client.get("/v1/webhooks", params={"limit": 100}, headers=headers).json()["data"]
    assert len(listed) == webhooks.MAX_ENDPOINTS_PER_TEAM


@pytest.mark.parametrize(("change", "code", "param"), BAD_WEBHOOKS)
def test_bad_webhooks_are_422_and_write_nothing(
    client: TestClient,
    teams: tuple[dict[str, str], dict[str, str]],
    counts: Callable[[], dict[str, int]],
    change: dict[str, Any],
    code: str,
    param: str,
) -> None:
    before = counts()
    body = {"url": PUBLIC_URL, "events": ["job.status_changed"], **change}
    assert_error(client.post("/v1/webhooks", json=body, headers=teams[0]), 422, code, param)
    assert counts() == before


@pytest.mark.parametrize(
    "url",
    [
        "https://bücher.example/x?a=ü",
        "https://hooks.example.com./x",
        "http://8.8.8.8:8080/x",
        "http://[2606:4700:4700::1111]/x",
        "http://[64:ff9b::808:808]/x",  # NAT64 of a public address
    ],
)
def test_public_urls_in_other_forms_are_accepted(
    client: TestClient, teams: tuple[dict[str, str], dict[str, str]], cleanup: list[str], url: str
) -> None:
    assert create_webhook(client, teams[0], cleanup, ["alias.moved"], url=url)["url"] == url


def _job_body(client: TestClient, headers: dict[str, str], base_id: str) -> dict[str, Any]:
    training = upload(client, headers, demonstration_lines(), "demonstrations", model=base_id)
    assert training.status_code == 201, training.text
    suite = make_suite(client, headers)
    return {
        "base": base_id,
        "stages": [
            {
                "skill": "arithmetic",
                "training_file": training.json()["id"],
                "suites": [suite["id"]],
                "method": "sft",
                "hyperparameters": {"max_steps": 2},
            }
        ],
    }


def test_events_are_written_with_their_change_for_the_right_teams_and_sent_after_commit(
    app: FastAPI,
    client: TestClient,
    db: sessionmaker[Session],
    backend: Settings,
    base_model: dict[str, Any],
    promoter: dict[str, str],
    teams: tuple[dict[str, str], dict[str, str]],
    cleanup: list[str],
) -> None:
    mine, other = teams
    everything = create_webhook(
        client, mine, cleanup, ["job.status_changed", "version.registered", "alias.moved"]
    )
    theirs = create_webhook(
        client, other, cleanup, ["job.status_changed", "version.registered", "alias.moved"]
    )
    body = _job_body(client, mine, base_model["id"])
    job_id = client.post("/v1/jobs", json=body, headers=mine).json()["id"]
    assert deliveries(client, mine, everything["id"]) == []  # creating a job is not a status change
    drain_broker(backend)

    # A status change through the API: one delivery for this team's endpoint, its task after the commit.
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=mine).status_code == 200
    [delivery] = deliveries(client, mine, everything["id"])
    assert delivery["event_type"] == "job.status_changed" and delivery["status"] == "pending"
    assert delivery["attempts"] == 0 and delivery["next_attempt_at"] is not None
    assert delivery["delivered_at"] is None and delivery["last_status_code"] is None
    assert drain_broker(backend) == [{"task": str(TaskName.DELIVER_WEBHOOK), "args": [delivery["id"]]}]
    assert deliveries(client, other, theirs["id"]) == []  # another team's job: nothing
    with db() as session:
        event = session.get(WebhookEvent, delivery["event_id"])
        assert event is not None
        assert event.payload["type"] == "job.status_changed" and event.payload["id"] == event.id
        assert event.payload["data"] == {"job_id": job_id, "from": "validating", "to": "cancelled"}
        assert event.payload["timestamp"].endswith("Z")

    # A rolled-back change leaves no event and sends nothing.
    second = client.post("/v1/jobs", json=body, headers=mine).json()["id"]
    drain_broker(backend)
    session = app.state.sessionmaker()  # a request's session: it carries the task producer
    assert jobs.advance(session, second, JobStatus.VALIDATING, JobStatus.QUEUED)
    session.rollback()
    session.close()
    assert drain_broker(backend) == []
    assert len(deliveries(client, mine, everything["id"])) == 1

    # A version registered for the team's job: this team's endpoint only.
    with session_scope(app.state.sessionmaker) as session:
        version = registry.register_version(
            session,
            parent_id=base_model["id"],
            job_id=second,
            skill="arithmetic",
            checkpoint_uri="file:///nonexistent/checkpoint",
            checkpoint_sha256="0" * 64,
        )
    newest = deliveries(client, mine, everything["id"])[0]
    assert newest["event_type"] == "version.registered"
    assert drain_broker(backend) == [{"task": str(TaskName.DELIVER_WEBHOOK), "args": [newest["id"]]}]
    assert deliveries(client, other, theirs["id"]) == []
    with db() as session:
        event = session.get(WebhookEvent, newest["event_id"])
        assert event is not None and event.payload["data"]["version_id"] == version.id
        assert event.payload["data"]["job_id"] == second

    # An alias move concerns every team (the registry is shared).
    alias = unique("wh-alias")
    moved = client.put(f"/v1/aliases/{alias}", json={"version": base_model["id"]}, headers=promoter)
    assert moved.status_code == 200, moved.text
    mine_moved = deliveries(client, mine, everything["id"])[0]
    theirs_moved = deliveries(client, other, theirs["id"])[0]
    assert mine_moved["event_type"] == theirs_moved["event_type"] == "alias.moved"
    assert mine_moved["event_id"] == theirs_moved["event_id"]  # one event, one delivery per endpoint
    sent = drain_broker(backend)
    sent_ids = [m["args"][0] for m in sent]
    assert {mine_moved["id"], theirs_moved["id"]} <= set(sent_ids)
    with db() as session:
        # Endpoints other tests left in the shared database get this event too, but nothing else is sent.
        sent_events = {session.get(WebhookDelivery, d).event_id for d in sent_ids}  # type: ignore[union-attr]
        assert sent_events == {mine_moved["event_id"]} and len(sent_ids) == len(set(sent_ids))
        payload = session.get(WebhookEvent, mine_moved["event_id"]).payload  # type: ignore[union-attr]
        assert payload["data"]["alias"] == alias and payload["data"]["to_version_id"] == base_model["id"]
        assert "actor" not in payload["data"]  # token names stay within their team

    # Deleting an endpoint removes its delivery log; the other team's stays.
    client.delete(f"/v1/webhooks/{everything['id']}", headers=mine)
    with db() as session:
        left = session.scalars(
            select(WebhookDelivery.id).where(WebhookDelivery.endpoint_id == everything["id"])
        ).all()
        assert left == []
    assert len(deliveries(client, other, theirs["id"])) == 1


def test_subscriptions_filter_events_and_pages_work(
    client: TestClient,
    base_model: dict[str, Any],
    promoter: dict[str, str],
    teams: tuple[dict[str, str], dict[str, str]],
    cleanup: list[str],
    backend: Settings,
) -> None:
    mine, _other = teams
    jobs_only = create_webhook(client, mine, cleanup, ["job.status_changed"])
    aliases_only = create_webhook(client, mine, cleanup, ["alias.moved"])
    alias = unique("wh-page")
    for i in range(3):  # three moves (promoting the version an alias already holds moves nothing)
        response = client.put(
            f"/v1/aliases/{alias}-{i}", json={"version": base_model["id"]}, headers=promoter
        )
        assert response.status_code == 200, response.text
    drain_broker(backend)
    assert deliveries(client, mine, jobs_only["id"]) == []
    all_three = deliveries(client, mine, aliases_only["id"])
    assert len(all_three) == 3 and len({d["event_id"] for d in all_three}) == 3
    page = client.get(
        f"/v1/webhooks/{aliases_only['id']}/deliveries", params={"limit": 2}, headers=mine
    ).json()
    assert page["has_more"] and [d["id"] for d in page["data"]] == [d["id"] for d in all_three[:2]]
    rest = client.get(
        f"/v1/webhooks/{aliases_only['id']}/deliveries",
        params={"limit": 2, "after": page["last_id"]},
        headers=mine,
    ).json()
    assert not rest["has_more"] and [d["id"] for d in rest["data"]] == [all_three[2]["id"]]


@pytest.mark.parametrize("arrives", ["before", "after"])
def test_an_endpoint_deleted_while_an_event_is_recorded_for_it_goes_with_its_delivery(
    client: TestClient, db: sessionmaker[Session], arrives: str
) -> None:
    """DELETE /v1/webhooks/{id} arriving while a status move records an event for the endpoint, before
    or after the move inserts the endpoint's delivery: the DELETE waits for the move's commit, then
    deletes that delivery too. (On PostgreSQL the foreign key failed either the move or the DELETE.)"""
    team = unique("team-race")
    headers = team_token(db, team, [Scope.JOBS_WRITE])
    body = {"url": PUBLIC_URL, "events": ["job.status_changed"]}
    endpoint_id = client.post("/v1/webhooks", json=body, headers=headers).json()["id"]
    answers: list[Response] = []
    deleting = threading.Thread(
        target=lambda: answers.append(client.delete(f"/v1/webhooks/{endpoint_id}", headers=headers))
    )

    def delete_meanwhile(*_: object) -> None:
        deleting.start()
        deleting.join(timeout=1.0)  # it waits for this transaction (SQLite: for the database)

    with session_scope(db) as session:  # the status move's transaction
        if arrives == "before":  # after record_event read the endpoints, before it writes
            event.listen(session, "before_flush", delete_meanwhile, once=True)
        data = {"job_id": "job_race", "from": "running", "to": "cancelled"}
        assert webhooks.record_event(session, type=EventType.JOB_STATUS_CHANGED, data=data, team=team)
        if arrives == "after":
            delete_meanwhile()
    deleting.join(timeout=30)
    [answer] = answers
    assert answer.status_code == 200, answer.text
    with db() as session:
        assert session.get(WebhookEndpoint, endpoint_id) is None
        left = session.scalars(select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id))
        assert left.all() == []
