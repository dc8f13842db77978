"""Jobs in the dashboard against the real app on SQLite and PostgreSQL: submitting while the broker is
down, the skill filter's pages, a job page's charts and events (resumed stages, long logs) and its
event stream once the session's token is revoked."""

from __future__ import annotations

import copy
import html
import re
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.auth.service import Scope, create_token
from app.db import session_scope
from app.jobs import service as jobs
from app.main import create_app
from app.settings import Settings
from app.ui.charts import metric_chart
from app.ui.views import jobs as jobs_view
from tests.app.api.conftest import LiveServer, Tokens, drain_broker, unique
from tests.ui.conftest import Dashboard, csrf_of

Browser = Callable[[str], Dashboard]
JOB_ROW = "<tr data-job="


def metrics(session: Session, job_id: str, step: int, loss: float) -> None:
    data = {"stage": 0, "skill": "arithmetic", "step": step, "total_steps": 30, "loss": loss}
    jobs.append_event(session, job_id=job_id, level="info", type="metrics", message=f"step {step}", data=data)


def test_a_job_the_broker_refused_is_queued_by_sending_the_form_again(
    backend: Settings,
    dashboard: Browser,
    tokens: Tokens,
    client: TestClient,
    writer: dict[str, str],
    base_model: dict[str, Any],
    training_file: str,
    suite: dict[str, Any],
) -> None:
    broken = create_app(backend.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"}))
    browser = Dashboard(broken)
    try:
        assert browser.sign_in(tokens.writer).status_code == 303
        form = browser.get("/ui/jobs/new", file=training_file).text
        key = form.split('name="idempotency_key" value="')[1].split('"')[0]
        body = {
            "idempotency_key": key,
            "base": base_model["id"],
            "skill": unique("skill"),
            "training_file": training_file,
            "suites": suite["id"],
            "method": "sft",
            "require_improvement": "true",
        }
        unsent = browser.post("/ui/jobs", body)
    finally:
        browser.http.close()
        broken.state.engine.dispose()
    assert unsent.status_code == 503 and 'id="form-error"' in unsent.text, unsent.text
    match = re.search(r"Job (job_\w+) was saved but not queued .*: submit again to queue it\.", unsent.text)
    assert match is not None, unsent.text
    assert f'name="idempotency_key" value="{key}"' in unsent.text, "the form keeps its key"
    job_id = match.group(1)
    assert client.get(f"/v1/jobs/{job_id}", headers=writer).json()["status"] == "validating"
    drain_broker(backend)
    # The broker is back: the same form, sent again, queues that job.
    again = dashboard(tokens.writer).post("/ui/jobs", body)
    assert again.status_code == 303 and again.headers["location"] == f"/ui/jobs/{job_id}"
    assert drain_broker(backend) == [{"task": "sdft.jobs.run", "args": [job_id]}]


def test_the_skill_filter_links_to_older_jobs_only_when_there_are_some(
    dashboard: Browser, tokens: Tokens, client: TestClient, writer: dict[str, str], job_body: dict[str, Any]
) -> None:
    body = copy.deepcopy(job_body)
    body["stages"][0]["skill"] = unique("paged")
    skill = body["stages"][0]["skill"]
    ids = [
        client.post("/v1/jobs", json=body, headers=writer).json()["id"] for _ in range(jobs_view.PAGE_SIZE)
    ]
    browser = dashboard(tokens.writer)
    full = browser.get("/ui/jobs", skill=skill).text
    assert full.count(JOB_ROW) == jobs_view.PAGE_SIZE and "Older jobs" not in full
    client.post("/v1/jobs", json=body, headers=writer)
    first = browser.get("/ui/jobs", skill=skill).text
    assert first.count(JOB_ROW) == jobs_view.PAGE_SIZE and ids[0] not in first
    link = re.search(r'href="(/ui/jobs\?[^"]*after=[^"]*)">Older jobs', first)
    assert link is not None
    older = browser.get(html.unescape(link.group(1))).text
    assert older.count(JOB_ROW) == 1 and ids[0] in older and "Older jobs" not in older


def test_a_stage_resumed_from_a_checkpoint_is_charted_once_per_step(
    dashboard: Browser,
    tokens: Tokens,
    client: TestClient,
    writer: dict[str, str],
    db: sessionmaker[Session],
    job_body: dict[str, Any],
) -> None:
    job_id = client.post("/v1/jobs", json=job_body, headers=writer).json()["id"]
    with session_scope(db) as session:
        # Steps 3 and 4 again after a resume from the checkpoint of step 2: their last values count.
        for step, loss in [(1, 4.0), (2, 3.0), (3, 2.0), (4, 1.0), (3, 2.5), (4, 1.5), (5, 0.5)]:
            metrics(session, job_id, step, loss)
    page = dashboard(tokens.writer).get(f"/ui/jobs/{job_id}").text
    assert 'id="step-events">5<' in page
    expected = metric_chart("loss", "loss", [("s", [(1, 4.0), (2, 3.0), (3, 2.5), (4, 1.5), (5, 0.5)])])
    assert f'points="{expected.lines[0].points}"' in page


def test_a_long_job_shows_its_last_steps_and_newest_events(
    dashboard: Browser,
    tokens: Tokens,
    client: TestClient,
    writer: dict[str, str],
    db: sessionmaker[Session],
    job_body: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A log longer than the page lists, in fewer rows.
    monkeypatch.setattr(jobs_view, "MAX_EVENTS", 5)
    job_id = client.post("/v1/jobs", json=job_body, headers=writer).json()["id"]  # + "job created"
    with session_scope(db) as session:
        for step in range(1, 31):
            metrics(session, job_id, step, 100.0 / step)
        for note in range(6):
            jobs.append_event(session, job_id=job_id, level="info", type="message", message=f"note {note}")
        jobs.append_event(session, job_id=job_id, level="warn", type="gate", message="gate verdict: rejected")
        last = jobs.append_event(
            session, job_id=job_id, level="error", type="status", message="running -> rejected"
        )
    page = dashboard(tokens.writer).get(f"/ui/jobs/{job_id}").text
    assert 'id="step-events">30<' in page
    loss = page[page.index('data-metric="loss"') :]
    assert 'class="latest">3.33<' in loss
    assert "gate verdict: rejected" in page and "running -&gt; rejected" in page
    assert "note 2" not in page and "note 3" in page and "The 4 oldest other events are not shown." in page
    assert f'data-events-stream="/ui/jobs/{job_id}/events?after={last.id}"' in page, (
        "the stream goes on from there"
    )


def test_the_job_event_stream_ends_when_the_token_is_revoked(
    live_server: LiveServer,
    client: TestClient,
    admin: dict[str, str],
    db: sessionmaker[Session],
    job_body: dict[str, Any],
) -> None:
    with session_scope(db) as session:
        token, secret = create_token(session, name=unique("streamer"), scopes=[Scope.JOBS_WRITE])
    job_id = client.post("/v1/jobs", json=job_body, headers=Tokens.header(secret)).json()["id"]
    lines: list[str] = []
    revoked = False
    with httpx.Client(base_url=live_server.url, timeout=10) as browser:
        form = browser.get("/ui/sign-in").text
        signed_in = browser.post("/ui/sign-in", data={"token": secret, "csrf_token": csrf_of(form)})
        assert signed_in.status_code == 303
        deadline = time.monotonic() + 10
        with browser.stream("GET", f"/ui/jobs/{job_id}/events") as stream:
            for line in stream.iter_lines():
                lines.append(line)
                if line == "event: status" and not revoked:  # the first event, "job created"
                    assert client.delete(f"/v1/tokens/{token.id}", headers=admin).status_code == 200
                    revoked = True
                    time.sleep(0.5)  # past a keep-alive: the stream has checked the token since
                    with session_scope(db) as session:
                        jobs.append_event(
                            session, job_id=job_id, level="info", type="message", message="secret"
                        )
                if time.monotonic() > deadline:
                    break
    assert "event: signed-out" in lines, lines
    assert not any("secret" in line for line in lines), lines
