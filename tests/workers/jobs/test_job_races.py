"""Races around a job's end, on SQLite and PostgreSQL, against the real database code: a job cancelled
while it is being evaluated is never promoted; a promotion whose alias moved since the job was created
registers the version and leaves the alias alone; two workers racing one expired lease: one runs the
job, the other exits cleanly, and the job does not fail. And around its start: a job waiting for its
lineage waits as long as the other job takes, while the reapers send nothing more; a validated job whose
message the broker lost stays queued for the reaper; a job cancelled as its stage ends registers no
version, and one cancelled while it is evaluated stops scoring; a duplicate message that fails leaves
the job to the worker that holds it."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from app.auth.service import Principal, Scope
from app.bootstrap import ensure_database
from app.db import make_engine, make_sessionmaker, session_scope
from app.errors import Conflict
from app.files import service as files
from app.files.service import FilePurpose
from app.jobs import service as jobs
from app.jobs.models import Job
from app.jobs.schemas import JobCreate
from app.jobs.states import JobStatus
from app.leases import service as leases
from app.leases.models import Lease
from app.queue import TaskName, TaskProducer, producer_info
from app.registry import service as registry
from app.registry.aliases import service as aliases
from app.registry.models import ModelVersion
from app.settings import Settings
from app.storage import make_store
from app.suites import service as suites
from app.suites.schemas import SuiteCreate
from tests.app.api.conftest import drain_broker
from tests.conftest import arithmetic_rows
from workers.jobs.claim import Heartbeat, claim
from workers.jobs.context import WorkerContext
from workers.jobs.evaluate import evaluate_and_gate
from workers.jobs.promote import succeed_and_promote
from workers.jobs.run_state import JobRun
from workers.jobs.train import register_candidate
from workers.jobs.validate import validate_job
from workers.models.placement import default_placement
from workers.reaper import reap_once

ADMIN = Principal(token_id="tok_system", name="test", scopes=frozenset({Scope.ADMIN}))
SUITE = '{"prompt": "What is 1 plus 1?", "reference": "2"}\n'


@dataclass
class World:
    settings: Settings
    sessions: sessionmaker[Session]
    base_id: str
    body: dict[str, Any]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def world(request: pytest.FixtureRequest, tmp_path: Path, tiny_model_dir: Path) -> Iterator[World]:
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else ""
    broker = f"redis://127.0.0.1:6379/{abs(hash(tmp_path)) % 15 + 1}" if url else ""
    settings = Settings(data_dir=tmp_path, database_url=url, broker_url=broker)
    ensure_database(settings)
    engine = make_engine(settings.database_url)
    # Job creation sends its message after the commit: a real (file-backed or Redis) broker takes it.
    sessions = make_sessionmaker(engine, info=producer_info(TaskProducer(settings.broker_url)))
    store = make_store(settings.storage_path)
    with session_scope(sessions) as session:
        from app.auth.models import ApiToken

        session.add(
            ApiToken(id=ADMIN.token_id, name="test", token_sha256="0" * 64, scopes=["admin"], created_at=0)
        )
        session.flush()
        base, _ = registry.register_base(session, path=tiny_model_dir, name="tiny", description=None)
        demos = files.create_file(
            session, store, principal=ADMIN, filename="d.jsonl", content=arithmetic_rows().encode(),
            purpose=FilePurpose.DEMONSTRATIONS,
        )  # fmt: skip
        suite_file = files.create_file(
            session, store, principal=ADMIN, filename="s.jsonl", content=SUITE.encode(),
            purpose=FilePurpose.REGRESSION_SUITE,
        )  # fmt: skip
        suite, _ = suites.create_suite(
            session, store, principal=ADMIN, body=SuiteCreate(name="s", file=suite_file.id, grader="contains")
        )
        aliases.move(session, name="production", version_id=base.id, actor="test", expected_version=None)
        base_id = base.id
        body = {
            "base": "alias:production",
            "stages": [{"skill": "s", "training_file": demos.id, "suites": [suite.id], "method": "sft"}],
            "auto_promote": "production",
        }
    yield World(settings, sessions, base_id, body)
    engine.dispose()


def _running_job(session: Session, world: World) -> Job:
    """A job as a worker has just claimed it: created, validated, running."""
    job, _ = jobs.create_job(session, principal=ADMIN, body=JobCreate.model_validate(world.body))
    for a, b in [(JobStatus.VALIDATING, JobStatus.QUEUED), (JobStatus.QUEUED, JobStatus.RUNNING)]:
        jobs.advance(session, job.id, a, b)
    return job


def _evaluating_job_with_an_accepted_candidate(world: World) -> tuple[str, str]:
    """A job at the end of its last evaluation: candidate registered and accepted, job evaluating."""
    with session_scope(world.sessions) as session:
        job = _running_job(session, world)
        uri = registry.get_version(session, world.base_id).checkpoint_uri
        candidate = registry.register_version(
            session, parent_id=world.base_id, job_id=job.id, skill="s", checkpoint_uri=uri,
            checkpoint_sha256="c" * 64,
        )  # fmt: skip
        jobs.advance(
            session, job.id, JobStatus.RUNNING, JobStatus.EVALUATING, candidate_version_ids=[candidate.id]
        )
        registry.decide_version(
            session, version_id=candidate.id, status=registry.VersionStatus.ACCEPTED, gate_report={}
        )
        return job.id, candidate.id


def test_a_job_cancelled_while_it_is_evaluated_is_never_promoted(world: World) -> None:
    for attempt in range(25):
        job_id, candidate_id = _evaluating_job_with_an_accepted_candidate(world)
        barrier = threading.Barrier(2)

        def cancel(job_id: str = job_id, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            # The job may finish first: then cancelling is a 409, the right answer.
            with session_scope(world.sessions) as session, contextlib.suppress(Conflict):
                jobs.cancel_job(session, job_id=job_id, actor="user")

        def finish(
            job_id: str = job_id, candidate_id: str = candidate_id, barrier: threading.Barrier = barrier
        ) -> None:
            barrier.wait()
            with session_scope(world.sessions) as session:
                succeed_and_promote(session, jobs.get_job(session, job_id), candidate_id)

        threads = [threading.Thread(target=cancel), threading.Thread(target=finish)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        with session_scope(world.sessions) as session:
            status = jobs.get_job(session, job_id).status
            alias = aliases.get_alias(session, "production").model_version_id
            assert status in ("succeeded", "cancelled"), attempt
            assert (alias == candidate_id) == (status == "succeeded"), f"attempt {attempt}: {status}, {alias}"
            if status == "succeeded":  # put the alias back for the next attempt
                aliases.move(session, name="production", version_id=world.base_id, actor="test")


def test_a_moved_alias_is_not_clobbered_by_auto_promote(world: World) -> None:
    job_id, candidate_id = _evaluating_job_with_an_accepted_candidate(world)
    _other_job, human_id = _evaluating_job_with_an_accepted_candidate(world)
    with session_scope(world.sessions) as session:
        # A human promotes another accepted version while the job runs.
        aliases.move(session, name="production", version_id=human_id, actor="a human")
    with session_scope(world.sessions) as session:
        assert not succeed_and_promote(session, jobs.get_job(session, job_id), candidate_id)
    with session_scope(world.sessions) as session:
        assert aliases.get_alias(session, "production").model_version_id == human_id
        job = jobs.get_job(session, job_id)
        assert job.status == "succeeded"
        warnings = [e.message for e in jobs.events_after(session, job_id, 0, 100) if e.level == "warn"]
        assert any("auto_promote of production skipped" in w and human_id in w for w in warnings)


def test_two_workers_racing_an_expired_lease_run_it_once(world: World) -> None:
    with session_scope(world.sessions) as session:
        job, _ = jobs.create_job(session, principal=ADMIN, body=JobCreate.model_validate(world.body))
        jobs.advance(session, job.id, JobStatus.VALIDATING, JobStatus.QUEUED)
        # A worker held it and died: its lease is long expired.
        leases.acquire(session, key=leases.job_key(job.id), owner="dead", job_id=job.id, ttl_seconds=-10)
    contexts = [
        WorkerContext(
            settings=world.settings, worker_id=f"w{i}", sessions=world.sessions, lease_ttl_seconds=60
        )
        for i in range(2)
    ]
    results: list[Any] = [None, None]
    barrier = threading.Barrier(2)

    def race(i: int) -> None:
        barrier.wait()
        results[i] = claim(contexts[i], job.id)

    threads = [threading.Thread(target=race, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [r for r in results if not isinstance(r, str)]
    losers = [r for r in results if isinstance(r, str)]
    assert len(winners) == 1 and len(losers) == 1, results
    assert "another worker holds" in losers[0]
    with session_scope(world.sessions) as session:
        assert jobs.get_job(session, job.id).status == "running"
        holder = leases.holder(session, leases.job_key(job.id))
        assert holder is not None and holder.owner in ("w0", "w1")


@pytest.fixture()
def tasks(world: World, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The Celery tasks module as a worker process runs it, on this world's database and broker."""
    import workers.tasks as module
    from app.settings import get_settings

    for name, value in [("DATA_DIR", world.settings.data_dir), ("DATABASE_URL", world.settings.database_url),
                        ("BROKER_URL", world.settings.broker_url)]:  # fmt: skip
        monkeypatch.setenv(f"SDFT_{name}", str(value))
    caches = (get_settings, module._engine, module._producer)
    for cached in caches:
        cached.cache_clear()
    yield module
    for cached in caches:
        cached.cache_clear()


def test_a_job_waits_for_its_lineage_as_long_as_the_other_job_takes(world: World, tasks: Any) -> None:
    with session_scope(world.sessions) as session:
        running, _ = jobs.create_job(session, principal=ADMIN, body=JobCreate.model_validate(world.body))
        waiting, _ = jobs.create_job(session, principal=ADMIN, body=JobCreate.model_validate(world.body))
        for job_id in (running.id, waiting.id):
            jobs.advance(session, job_id, JobStatus.VALIDATING, JobStatus.QUEUED)
        jobs.advance(session, running.id, JobStatus.QUEUED, JobStatus.RUNNING)
        # Another worker runs the first job, for longer than every retry a task has.
        for key in (leases.job_key(running.id), leases.lineage_key(world.base_id)):
            leases.acquire(session, key=key, owner="other", job_id=running.id, ttl_seconds=3600)
        running_id, waiting_id = running.id, waiting.id
    drain_broker(world.settings, "gpu")
    for _ in range(tasks.MAX_RETRIES + 2):
        result = tasks.train_job_task.apply(args=[waiting_id])
        assert result.successful() and f"waiting for {running_id}" in result.get()
    # Each check sent the next one: a fresh message, so no retry was counted and the job still waits.
    assert drain_broker(world.settings, "gpu") == [{"task": TaskName.TRAIN_JOB, "args": [waiting_id]}] * (
        tasks.MAX_RETRIES + 2
    )
    producer = TaskProducer(world.settings.broker_url)
    with session_scope(world.sessions) as session:
        assert jobs.get_job(session, waiting_id).status == "queued"
        session.execute(update(Job).where(Job.id == waiting_id).values(updated_at=int(time.time()) - 120))
        # No job lease, so it looks orphaned, but its next check is on its way: the reapers send nothing.
        assert reap_once(session, producer, stale_after_seconds=60, reaper_id="r1") == []
        # That message was lost: once its lease runs out, one reaper sends the job once.
        session.execute(
            update(Lease).where(Lease.key == leases.reap_key(waiting_id)).values(expires_at=time.time() - 1)
        )
    with session_scope(world.sessions) as session:
        assert reap_once(session, producer, stale_after_seconds=60, reaper_id="r1") == [waiting_id]
    for reaper in ("r1", "r2"):  # not again in the next rounds, by the same reaper or another
        with session_scope(world.sessions) as session:
            assert reap_once(session, producer, stale_after_seconds=60, reaper_id=reaper) == []
    assert drain_broker(world.settings, "gpu") == [{"task": TaskName.TRAIN_JOB, "args": [waiting_id]}]


def test_a_validated_job_whose_message_is_lost_stays_queued(world: World) -> None:
    with session_scope(world.sessions) as session:
        job_id = jobs.create_job(session, principal=ADMIN, body=JobCreate.model_validate(world.body))[0].id
    unreachable = make_sessionmaker(
        world.sessions.kw["bind"], info=producer_info(TaskProducer("redis://127.0.0.1:1/0"))
    )
    store = make_store(world.settings.storage_path)
    with session_scope(unreachable) as session:  # no TaskNotSent: the reaper re-sends a queued job
        assert validate_job(session, store, job_id) == f"{job_id} queued"
    with session_scope(world.sessions) as session:
        assert jobs.get_job(session, job_id).status == "queued"


def test_validation_fails_a_job_whose_suite_cannot_be_evaluated_on_its_base(world: World) -> None:
    # An item too long for the base's context fails on parent and candidate alike, so every gate on
    # the lineage would fail: the job is refused before any training, naming the suite and the item.
    store = make_store(world.settings.storage_path)
    long_row = json.dumps({"prompt": "plus " * 3000, "reference": "2"}) + "\n"
    with session_scope(world.sessions) as session:
        suite_file = files.create_file(
            session, store, principal=ADMIN, filename="long.jsonl", content=(SUITE + long_row).encode(),
            purpose=FilePurpose.REGRESSION_SUITE,
        )  # fmt: skip
        suite, _ = suites.create_suite(
            session,
            store,
            principal=ADMIN,
            body=SuiteCreate(name="long", file=suite_file.id, grader="contains"),
        )
        body = {**world.body, "stages": [{**world.body["stages"][0], "suites": [suite.id]}]}
        job_id = jobs.create_job(session, principal=ADMIN, body=JobCreate.model_validate(body))[0].id
    with session_scope(world.sessions) as session:
        assert validate_job(session, store, job_id).startswith("failed validation")
    with session_scope(world.sessions) as session:
        job = jobs.get_job(session, job_id)
        assert job.status == "failed" and job.error is not None
        message = job.error["message"]
    assert f"stages[0].suites: {suite.id}: 1 item(s) cannot be evaluated" in message
    assert "item row-2 (line 2): prompt is" in message and "the model's context is 2048" in message


def test_cancelling_while_a_version_is_registered_does_not_deadlock(world: World) -> None:
    # The worker's transaction inserts the version (its foreign key share-locks the job row), then
    # moves the job; a cancel meanwhile updates the job and appends its event. With the event's job
    # lock as FOR UPDATE the two waited for each other (PostgreSQL: deadlock detected).
    with session_scope(world.sessions) as session:
        job_id = _running_job(session, world).id
        uri = registry.get_version(session, world.base_id).checkpoint_uri
    worker = world.sessions()
    worker.begin()
    registry.register_version(
        worker, parent_id=world.base_id, job_id=job_id, skill="s", checkpoint_uri=uri,
        checkpoint_sha256="e" * 64,
    )  # fmt: skip
    worker.flush()
    cancelled: list[str] = []

    def cancel() -> None:
        with session_scope(world.sessions) as session:
            cancelled.append(jobs.cancel_job(session, job_id=job_id, actor="user").status)

    postgres = world.sessions.kw["bind"].dialect.name == "postgresql"
    thread = threading.Thread(target=cancel)
    thread.start()
    thread.join(timeout=5 if postgres else 0.2)
    assert thread.is_alive() is not postgres  # PostgreSQL: the cancel did not wait for the worker
    try:
        # PostgreSQL: the cancel went through first. SQLite serialises writers: it waits for the worker.
        moved = jobs.advance(worker, job_id, JobStatus.RUNNING, JobStatus.EVALUATING)
        assert moved is not postgres
        worker.commit()
    finally:
        worker.close()
    thread.join(timeout=30)
    assert cancelled == ["cancelled"]


def test_a_job_cancelled_as_its_stage_ends_registers_no_version(world: World) -> None:
    with session_scope(world.sessions) as session:
        job = _running_job(session, world)
        uri = registry.get_version(session, world.base_id).checkpoint_uri
        job_id = job.id
    stored = {
        "parent_id": world.base_id,
        "checkpoint_uri": uri,
        "checkpoint_sha256": "d" * 64,
        "training": {},
    }
    with session_scope(world.sessions) as session:  # the user cancels while the model is being stored
        jobs.cancel_job(session, job_id=job_id, actor="user")
    with session_scope(world.sessions) as session:
        assert register_candidate(session, jobs.get_job(session, job_id), 0, **stored) is None
    with session_scope(world.sessions) as session:
        assert session.scalar(select(ModelVersion).where(ModelVersion.job_id == job_id)) is None
        assert jobs.get_job(session, job_id).status == "cancelled"
    # Not cancelled: the version and the move to evaluating land together.
    with session_scope(world.sessions) as session:
        job = _running_job(session, world)
        version_id = register_candidate(session, job, 0, **stored)
        assert version_id is not None and jobs.get_job(session, job.id).candidate_version_ids == [version_id]
        assert jobs.get_job(session, job.id).status == "evaluating"


def test_a_job_cancelled_while_evaluating_stops_scoring(world: World) -> None:
    with session_scope(world.sessions) as session:
        job = _running_job(session, world)
        uri = registry.get_version(session, world.base_id).checkpoint_uri
        stored = {"parent_id": world.base_id, "checkpoint_uri": uri, "checkpoint_sha256": "f" * 64}
        candidate_id = register_candidate(session, job, 0, **stored, training={})
        job_id = job.id
    with session_scope(world.sessions) as session:
        jobs.cancel_job(session, job_id=job_id, actor="user")
        job = jobs.get_job(session, job_id)
        session.expunge(job)
    ctx = WorkerContext(settings=world.settings, worker_id="w", sessions=world.sessions)
    run = JobRun(
        job_id, ctx, Heartbeat(ctx, []), make_store(world.settings.storage_path), default_placement()
    )
    evaluate_and_gate(run, job)  # returns at once: no model is loaded, nothing is scored or decided
    with session_scope(world.sessions) as session:
        assert registry.get_version(session, candidate_id).status == "candidate"
        assert registry.list_scores(session, world.base_id) == []
        events = [e.message for e in jobs.events_after(session, job_id, 0, 100)]
        assert "evaluation stopped: the job is cancelled" in events


def test_a_duplicate_message_that_fails_leaves_a_job_another_worker_runs(world: World, tasks: Any) -> None:
    with session_scope(world.sessions) as session:
        job = _running_job(session, world)
        leases.acquire(session, key=leases.job_key(job.id), owner="other", job_id=job.id, ttl_seconds=3600)
        job_id = job.id
    # This worker's duplicate of the job's message ran out of retries on a database error.
    tasks.train_job_task.on_failure(ConnectionError("db down"), "task-1", [job_id], {}, None)
    with session_scope(world.sessions) as session:
        assert jobs.get_job(session, job_id).status == "running"
        session.execute(update(Lease).where(Lease.key == leases.job_key(job_id)).values(expires_at=0))
    # Nobody holds it: the failure is the job's.
    tasks.train_job_task.on_failure(ConnectionError("db down"), "task-2", [job_id], {}, None)
    with session_scope(world.sessions) as session:
        job = jobs.get_job(session, job_id)
        assert job.status == "failed" and job.error["code"] == "infrastructure_error"
