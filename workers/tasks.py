"""Celery tasks: thin wrappers that take a job id and call plain functions (tests call those directly).

- `sdft.jobs.run` (queue `default`): the API's message. Re-validates the job's inputs, moves it
  validating -> queued and sends `sdft.jobs.train` after that commit.
- `sdft.jobs.train` (queue `gpu`, one worker process per GPU): the pipeline (workers/jobs/pipeline.py).

Retries are narrow: only broker/database/storage hiccups, with backoff, a bounded number of times;
bad data, bad configs and out-of-memory fail the job at once with a reason.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from functools import lru_cache
from typing import Any

from celery import Task, signals
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError as DatabaseError

from app.contracts.demonstrations import DatasetError, parse_demonstrations
from app.db import make_engine, make_sessionmaker, session_scope
from app.errors import AppError
from app.files import service as files
from app.jobs import service as jobs
from app.jobs.states import JobStatus, is_terminal
from app.queue import TaskName, TaskProducer, enqueue_after_commit, producer_info
from app.registry import service as registry
from app.settings import get_settings
from app.storage import make_store
from app.suites import service as suites_service
from workers.celery_app import app
from workers.jobs.errors import JobFailed, Transient
from workers.reaper import Reaper

log = logging.getLogger(__name__)
TRANSIENT = (Transient, BrokerError, DatabaseError, ConnectionError, TimeoutError)
MAX_RETRIES = 4
WORKER_ID = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@lru_cache(maxsize=1)
def _engine() -> Engine:
    """One engine (connection pool) per worker process, created lazily in the process that uses it,
    instead of a new pool per task that is never disposed."""
    return make_engine(get_settings().database_url)


def _producer_sessions() -> Any:
    return make_sessionmaker(_engine(), info=producer_info(TaskProducer(get_settings().broker_url)))


def validate_job(job_id: str) -> str:
    """validating -> queued (and send the training task) or -> failed with every problem found."""
    settings = get_settings()
    store = make_store(settings.storage_path)
    with session_scope(_producer_sessions()) as session:
        job = jobs.get_job(session, job_id)
        if job.status != JobStatus.VALIDATING:
            return f"nothing to do: {job_id} is {job.status}"
        problems: list[str] = []
        base = registry.get_version(session, job.base_version_id)
        if registry.local_model_dir(base) is None:
            problems.append(f"base: the weights of {base.id} ({base.checkpoint_uri}) are not reachable")
        for i, stage in enumerate(job.request["stages"]):
            try:
                parse_demonstrations(files.read_text(store, files.get_file(session, stage["training_file"])))
            except (DatasetError, AppError, OSError) as exc:
                problems.append(f"stages[{i}].training_file: {exc}")
            for suite_id in stage["suites"]:
                try:
                    suites_service.load_suite(session, store, suite_id)
                except (AppError, RuntimeError, OSError) as exc:
                    problems.append(f"stages[{i}].suites: {suite_id}: {exc}")
        for suite_id in job.request.get("general_suites", []):
            try:
                suites_service.load_suite(session, store, suite_id)
            except (AppError, RuntimeError, OSError) as exc:
                problems.append(f"general_suites: {suite_id}: {exc}")
        if problems:
            error = {"code": "invalid_job", "message": "; ".join(problems), "param": None}
            jobs.advance(session, job_id, JobStatus.VALIDATING, JobStatus.FAILED, error=error)
            return f"failed validation: {error['message']}"
        if jobs.advance(session, job_id, JobStatus.VALIDATING, JobStatus.QUEUED):
            enqueue_after_commit(session, TaskName.TRAIN_JOB, job_id)
    return f"{job_id} queued"


def fail_job(job_id: str, code: str, message: str) -> None:
    with session_scope(make_sessionmaker(_engine())) as session:
        job = jobs.get_job(session, job_id)
        status = JobStatus(job.status)
        if not is_terminal(status):
            jobs.advance(
                session,
                job_id,
                status,
                JobStatus.FAILED,
                error={"code": code, "message": message, "param": None},
            )


class JobTask(Task):
    """After the last retry of a transient error, or on an unexpected error, the job fails with a reason
    instead of staying `running` forever."""

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        job_id = args[0] if args else kwargs.get("job_id")
        if job_id:
            code = "infrastructure_error" if isinstance(exc, TRANSIENT) else "internal_error"
            fail_job(job_id, code, f"{type(exc).__name__}: {exc}")


@app.task(
    name=str(TaskName.RUN_JOB),
    base=JobTask,
    autoretry_for=TRANSIENT,
    retry_backoff=True,
    retry_backoff_max=60,
    max_retries=MAX_RETRIES,
)
def run_job_task(job_id: str) -> str:
    return validate_job(job_id)


@app.task(
    name=str(TaskName.TRAIN_JOB),
    base=JobTask,
    bind=True,
    autoretry_for=TRANSIENT,
    retry_backoff=True,
    retry_backoff_max=60,
    max_retries=MAX_RETRIES,
)
def train_job_task(self: Task, job_id: str) -> str:
    from workers.jobs.pipeline import LineageBusy, WorkerContext, run_job
    from workers.rollout.factory import make_backend_factory

    settings = get_settings()
    ctx = WorkerContext(
        settings=settings,
        sessions=make_sessionmaker(_engine()),
        worker_id=WORKER_ID,
        lease_ttl_seconds=settings.lease_ttl_seconds,
        backend_factory=make_backend_factory(settings.rollout),
        rollout_backend=settings.rollout.backend,
    )
    try:
        return run_job(job_id, ctx)
    except LineageBusy as busy:
        # Not an error: one writer per lineage. Check again later, without counting a retry.
        raise self.retry(countdown=settings.lineage_wait_seconds, max_retries=None, exc=busy) from None
    except JobFailed as failure:
        fail_job(job_id, failure.code, failure.message)
        return f"failed: {failure.message}"


@signals.worker_ready.connect
def _start_reaper(sender: Any = None, **_: Any) -> None:
    settings = get_settings()
    reaper = Reaper(
        make_sessionmaker(make_engine(settings.database_url)),
        TaskProducer(settings.broker_url),
        interval=settings.reaper_interval_seconds,
        stale_after=settings.lease_ttl_seconds,
    )
    reaper.start()
