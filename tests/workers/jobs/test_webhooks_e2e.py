"""Webhooks end to end: the API (uvicorn) and a real Celery worker of the `default` queue as
subprocesses, real receivers on 127.0.0.1. A job's status changes reach its team's endpoints signed
the Standard Webhooks way; a failing receiver is retried (the task sent again with a countdown) until it
answers, each event delivered once; a receiver that keeps failing is disabled and the job says so; the
other team's endpoint hears nothing. SQLite + its broker, and PostgreSQL + Redis."""

from __future__ import annotations

import json
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from tests.workers.jobs.conftest import Service, make_service
from tests.workers.webhooks.receiver import Receiver, receiving

DEMOS = "".join(
    json.dumps({"prompt": f"What is {i} plus {i}?", "demonstration": f"{i} plus {i} is {2 * i}."}) + "\n"
    for i in range(4)
)
SUITE = "".join(
    json.dumps({"id": f"q{i}", "prompt": f"What is {i} plus {i}?", "reference": f"{2 * i}"}) + "\n"
    for i in range(3)
)
WEBHOOK_ENV = {
    "SDFT_WEBHOOK_ALLOW_PRIVATE_URLS": "true",
    "SDFT_WEBHOOK_BACKOFF_SECONDS": "1",
    "SDFT_WEBHOOK_BACKOFF_MAX_SECONDS": "2",
    "SDFT_WEBHOOK_MAX_CONSECUTIVE_FAILURES": "3",
}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def hooked(request: pytest.FixtureRequest, tmp_path: Path, tiny_model_dir: Path) -> Iterator[Service]:
    """The service with short webhook backoffs and a worker of the `default` queue only (validation and
    deliveries; no training)."""
    from workers.local_service import worker_command

    pg = request.getfixturevalue("postgres_url") if request.param == "postgres" else None
    svc = make_service(tmp_path, tiny_model_dir, request.param, pg)
    svc.env.update(WEBHOOK_ENV)
    if request.param == "postgres":  # the Redis database is picked at random: drop what earlier runs left
        import redis

        redis.Redis.from_url(svc.env["SDFT_BROKER_URL"]).flushdb()
    svc.start_api()
    worker = subprocess.Popen(
        worker_command(queues="default"), env=svc.env, stdout=svc._log("worker"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    svc.workers.append(worker)
    try:
        yield svc
    finally:
        svc.stop()


def until(check: Callable[[], Any], what: str, svc: Service, timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what} did not happen in {timeout} s\n{svc._tail('worker')}")


def test_status_changes_reach_the_teams_receivers_signed_retried_and_once(hooked: Service) -> None:
    svc = hooked
    with (
        receiving(statuses=[500, 503]) as flaky,
        receiving(default=500) as dead,
        receiving() as rivals,
        svc.client() as c,
    ):
        flaky_hook = c.post("/v1/webhooks", json={"url": flaky.url, "events": ["job.status_changed"]}).json()
        dead_hook = c.post("/v1/webhooks", json={"url": dead.url, "events": ["job.status_changed"]}).json()
        token = c.post("/v1/tokens", json={"name": "rival", "team": "rival", "scopes": ["jobs:write"]})
        rival_headers = {"Authorization": f"Bearer {token.json()['token']}"}
        body = {"url": rivals.url, "events": ["job.status_changed", "version.registered"]}
        assert c.post("/v1/webhooks", json=body, headers=rival_headers).status_code == 201

        demos = svc.upload("demos.jsonl", DEMOS, "demonstrations")
        suite = svc.suite("e2e-hooks", SUITE, "contains")
        stage = {"skill": "arithmetic", "training_file": demos, "suites": [suite], "method": "sft"}
        job_id = svc.create_job({"base": svc.base_version_id, "stages": [stage], "metadata": {"run": "e2e"}})
        svc.wait(job_id, timeout=120, until=lambda job: job["status"] == "queued")  # the worker validated it
        assert c.post(f"/v1/jobs/{job_id}/cancel").status_code == 200

        # The flaky receiver answers 500 and 503 first: both events still arrive, each accepted once.
        def accepted(receiver: Receiver) -> Counter[str]:
            return Counter(r.headers["webhook-id"] for r in receiver.received if 200 <= r.status < 300)

        until(lambda: len(accepted(flaky)) == 2, "both deliveries to the flaky receiver", svc)
        until(
            lambda: c.get(f"/v1/webhooks/{dead_hook['id']}").json()["status"] == "disabled",
            "the failing endpoint disabled",
            svc,
        )
        time.sleep(5)  # past the reaper's grace (a 4 s lease): nothing more is sent
        flaky_seen, dead_seen = len(flaky.received), len(dead.received)
        time.sleep(2)
        assert (len(flaky.received), len(dead.received)) == (flaky_seen, dead_seen)

        assert set(accepted(flaky).values()) == {1}  # no event accepted twice
        assert len(flaky.received) == 4  # 2 failures + 2 deliveries
        statuses = []
        for received in flaky.received:
            payload = Webhook(flaky_hook["secret"]).verify(received.body, received.headers)
            assert payload["data"]["job_id"] == job_id
            statuses.append((payload["data"]["from"], payload["data"]["to"]))
        assert set(statuses) == {("validating", "queued"), ("queued", "cancelled")}
        log = c.get(f"/v1/webhooks/{flaky_hook['id']}/deliveries").json()["data"]
        assert [d["status"] for d in log] == ["delivered", "delivered"]
        assert sum(d["attempts"] for d in log) == 4

        assert len(dead.received) >= 3 and all(r.status == 500 for r in dead.received)
        disabled = c.get(f"/v1/webhooks/{dead_hook['id']}").json()
        assert disabled["disabled_reason"] == "3 deliveries failed in a row"
        told = [e for e in svc.events(job_id) if e["type"] == "webhook"]
        assert told and dead_hook["id"] in told[0]["message"]

        assert rivals.received == []  # another team's endpoint hears nothing of this team's job
        assert c.get("/v1/jobs", params={"metadata[run]": "e2e"}).json()["data"][0]["id"] == job_id
