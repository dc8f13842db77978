"""Messages to the Celery workers, by stable task name only: the API never imports `workers`.

A job's message is sent only after the transaction that created the job commits (Polar's pattern):
`enqueue_after_commit` buffers on the session, a session `after_commit` hook sends, and a rollback
drops the buffer, so a worker never receives an id whose row does not exist.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from celery import Celery
from sqlalchemy import event
from sqlalchemy.orm import Session

from app.db import AFTER_COMMIT_ERROR_KEY
from app.errors import ServiceUnavailable

log = logging.getLogger(__name__)

PRODUCER_INFO_KEY = "task_producer"
PENDING_INFO_KEY = "pending_tasks"
BROKER_TIMEOUT_SECONDS = 5.0


class TaskName(StrEnum):
    """Names the workers register their tasks under; renaming one is a breaking change."""

    # The wire names stay as first published: renaming a task breaks messages already in flight.
    VALIDATE_JOB = "sdft.jobs.run"  # sent by the API for a new job; validates it and queues training
    TRAIN_JOB = "sdft.jobs.train"  # sent once a job is queued: trains, evaluates, gates, promotes
    DELIVER_WEBHOOK = "sdft.webhooks.deliver"  # takes a webhook delivery id: one POST, then its retry


TASK_QUEUES: dict[TaskName, str] = {
    TaskName.VALIDATE_JOB: "default",
    TaskName.TRAIN_JOB: "gpu",
    TaskName.DELIVER_WEBHOOK: "default",
}


class TaskNotSent(ServiceUnavailable):
    """The row was committed but its message could not be sent (broker down)."""


@dataclass(frozen=True)
class PendingTask:
    name: TaskName
    job_id: str  # the one argument: a job id, or a webhook delivery id
    countdown: float | None = None
    # A task another mechanism re-sends when lost (webhook deliveries: the reaper's sweep): a broker
    # outage is logged, not reported to the caller as an unsent task.
    required: bool = True


class TaskProducer:
    """A send-only Celery app: JSON messages, no result backend, no task code."""

    def __init__(self, broker_url: str) -> None:
        self.broker_url = broker_url
        self.celery = Celery("sdft-api", broker=broker_url, set_as_current=False)
        self.celery.conf.update(
            task_serializer="json",
            accept_content=["json"],
            result_serializer="json",
            task_ignore_result=True,
            broker_connection_timeout=BROKER_TIMEOUT_SECONDS,
            broker_connection_retry_on_startup=False,
            broker_transport_options={"max_retries": 1},
        )

    def send(self, name: TaskName, job_id: str, *, countdown: float | None = None) -> None:
        self.celery.send_task(
            str(name),
            args=[job_id],
            queue=TASK_QUEUES[name],
            countdown=countdown,
            retry=True,
            retry_policy={"max_retries": 1},
        )

    def queue_depths(self) -> dict[str, int]:
        """Messages waiting per queue (passive declare; works for the redis and sqlalchemy transports)."""
        depths: dict[str, int] = {}
        with self.celery.connection_for_read() as connection:
            channel = connection.default_channel
            for queue in sorted(set(TASK_QUEUES.values())):
                try:
                    depths[queue] = channel.queue_declare(queue=queue, passive=True).message_count
                except Exception:  # a queue nobody declared yet holds nothing
                    depths[queue] = 0
        return depths

    def ping(self) -> None:
        """Raise if the broker cannot be reached."""
        with self.celery.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=BROKER_TIMEOUT_SECONDS)


def enqueue_after_commit(
    session: Session,
    task_name: TaskName,
    job_id: str,
    *,
    countdown: float | None = None,
    required: bool = True,
) -> None:
    """Send `task_name(job_id)` once `session` commits (`countdown` seconds later, if given); forget it
    if the session rolls back. With `required=False` the task is one a periodic sweep re-sends when
    lost: a session without a producer skips it, and a broker outage is only logged."""
    if not isinstance(session.info.get(PRODUCER_INFO_KEY), TaskProducer):
        if not required:
            return
        raise RuntimeError("this session has no task producer (see app.db.make_sessionmaker)")
    task = PendingTask(task_name, job_id, countdown, required)
    session.info.setdefault(PENDING_INFO_KEY, []).append(task)


@event.listens_for(Session, "after_commit")
def _send_pending(session: Session) -> None:
    pending: list[PendingTask] = session.info.pop(PENDING_INFO_KEY, [])
    if not pending:
        return
    producer: TaskProducer = session.info[PRODUCER_INFO_KEY]
    unsent = []
    for task in pending:
        try:
            producer.send(task.name, task.job_id, countdown=task.countdown)
        except Exception as exc:
            if not task.required:
                log.warning("could not send %s(%s) (re-sent by the sweep): %s", task.name, task.job_id, exc)
                continue
            log.error("could not send %s(%s): %s", task.name, task.job_id, exc)
            unsent.append(task.job_id)
    if unsent:
        session.info[AFTER_COMMIT_ERROR_KEY] = TaskNotSent(
            f"{', '.join(unsent)} saved but not queued (broker unavailable); "
            "retry the request with the same Idempotency-Key to queue it",
            code="broker_unavailable",
        )


@event.listens_for(Session, "after_rollback")
def _drop_pending(session: Session) -> None:
    session.info.pop(PENDING_INFO_KEY, None)


def producer_info(producer: TaskProducer | None) -> dict[str, Any]:
    """`info=` for a sessionmaker whose sessions may enqueue."""
    return {} if producer is None else {PRODUCER_INFO_KEY: producer}
