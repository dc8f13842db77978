"""Celery tasks: thin wrappers that take a job id and call plain functions (tests call those directly).

- `sdft.jobs.run` (queue `default`, TaskName.VALIDATE_JOB): re-validates a new job's inputs, moves it
  validating -> queued and sends the training task after that commit (workers/jobs/validate.py).
- `sdft.jobs.train` (queue `gpu`, one worker process per GPU): the job's phases (workers/jobs/run.py).
- `sdft.webhooks.deliver` (queue `default`, TaskName.DELIVER_WEBHOOK): one attempt at one webhook
  delivery; its retries are the task sent again with a countdown (workers/webhooks.py).

Retries are narrow: only broker and database hiccups, with backoff, a bounded number of times; bad
data, bad configs and out-of-memory fail the job at once with a reason.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any

from celery import Task, signals
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError as DatabaseError
from sqlalchemy.orm import Session, sessionmaker

from app.db import make_engine, make_sessionmaker, session_scope
from app.leases import service as leases
from app.queue import TaskName, TaskProducer, producer_info
from app.settings import get_settings
from app.storage import make_store
from workers.celery_app import app
from workers.jobs.errors import JobFailed, fail_job
from workers.reaper import Reaper

log = logging.getLogger(__name__)
TRANSIENT = (BrokerError, DatabaseError, ConnectionError, TimeoutError)
MAX_RETRIES = 4


@lru_cache(maxsize=1)
def _engine() -> Engine:
    """One engine (connection pool) per worker process, created lazily in the process that uses it,
    instead of a new pool per task that is never disposed."""
    return make_engine(get_settings().database_url)


@lru_cache(maxsize=1)
def _producer() -> TaskProducer:
    return TaskProducer(get_settings().broker_url)


def _sessions() -> sessionmaker[Session]:
    """Sessions that send tasks after their commit (a job's status move sends its webhook deliveries)."""
    return make_sessionmaker(_engine(), info=producer_info(_producer()))


class JobTask(Task):
    """After the last retry of a transient error, or on an unexpected error, the job fails with a reason
    (its type, never its text: exception messages can carry SQL and parameters) instead of staying
    `running` forever; the full error goes to the worker's log. Unless another worker holds the job's
    lease: then this was a duplicate message, and the job is that worker's to finish."""

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        from workers.jobs.context import worker_id

        job_id = args[0] if args else kwargs.get("job_id")
        if not job_id:
            return
        log.error("task %s for %s failed: %r", self.name, job_id, exc)
        code = "infrastructure_error" if isinstance(exc, TRANSIENT) else "internal_error"
        failure = JobFailed(code, f"the worker hit an unexpected {type(exc).__name__}; see the worker log")
        with session_scope(_sessions()) as session:
            holder = leases.holder(session, leases.job_key(job_id))
            if holder is not None and holder.owner != worker_id():
                log.error("%s is run by %s: left to it", job_id, holder.owner)
                return
            fail_job(session, job_id, failure)


@app.task(
    name=str(TaskName.VALIDATE_JOB),
    base=JobTask,
    autoretry_for=TRANSIENT,
    retry_backoff=True,
    retry_backoff_max=60,
    max_retries=MAX_RETRIES,
)
def validate_job_task(job_id: str) -> str:
    from workers.jobs.validate import validate_job

    settings = get_settings()
    with session_scope(_sessions()) as session:
        return validate_job(session, make_store(settings.storage_path), job_id)


@app.task(
    name=str(TaskName.TRAIN_JOB),
    base=JobTask,
    autoretry_for=TRANSIENT,
    retry_backoff=True,
    retry_backoff_max=60,
    max_retries=MAX_RETRIES,
)
def train_job_task(job_id: str) -> str:
    from workers.jobs.claim import LineageBusy, wait_for_lineage
    from workers.jobs.context import WorkerContext, worker_id
    from workers.jobs.run import run_job
    from workers.rollout.factory import make_backend_factory

    settings = get_settings()
    ctx = WorkerContext(
        settings=settings,
        sessions=_sessions(),
        worker_id=worker_id(),
        lease_ttl_seconds=settings.lease_ttl_seconds,
        backend_factory=make_backend_factory(settings.rollout),
        rollout_backend=settings.rollout.backend,
        eval_backend=settings.eval_backend,
    )
    try:
        return run_job(job_id, ctx)
    except LineageBusy as busy:  # not an error: one writer per lineage
        with ctx.session() as session:
            wait_for_lineage(
                session,
                job_id,
                wait_seconds=settings.lineage_wait_seconds,
                lease_ttl_seconds=settings.lease_ttl_seconds,
            )
        return f"{job_id}: {busy}; checking again in {settings.lineage_wait_seconds:g} s"


@app.task(
    name=str(TaskName.DELIVER_WEBHOOK),
    autoretry_for=TRANSIENT,
    retry_backoff=True,
    retry_backoff_max=60,
    max_retries=MAX_RETRIES,
)
def deliver_webhook_task(delivery_id: str) -> str:
    from workers.webhooks import RetryPolicy, deliver

    return deliver(_sessions(), delivery_id, RetryPolicy.from_settings(get_settings()))


@signals.worker_process_init.connect
def set_worker_threads(**_: Any) -> None:
    """Each process that runs jobs computes on `SDFT_WORKER_THREADS` torch threads, set before any
    vLLM engine starts (a CPU engine computes on the threads torch has when it starts)."""
    import torch

    torch.set_num_threads(get_settings().worker_threads)


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
