"""Re-enqueue jobs whose worker died: status running or evaluating, and nobody renews their lease.

A worker killed with SIGKILL cannot reject its message; the broker may hold it unacknowledged until
the visibility timeout (hours, so that long jobs are never run twice). The job lease expires within
`lease_ttl_seconds` instead, and any worker's reaper then sends the job again; the task that receives
it resumes the stage from its last checkpoint. A duplicate message is harmless: a job is run only by
the holder of its lease.
"""

from __future__ import annotations

import logging
import threading
import time

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.jobs.models import Job
from app.jobs.states import JobStatus
from app.leases import service as leases
from app.queue import TaskName, TaskProducer

log = logging.getLogger(__name__)
RESUMABLE = (JobStatus.RUNNING, JobStatus.EVALUATING)


def orphaned_jobs(session: Session, *, stale_after_seconds: float) -> list[str]:
    """Jobs in a working status with no live lease, untouched for `stale_after_seconds`."""
    cutoff = int(time.time() - stale_after_seconds)
    candidates = session.scalars(
        select(Job.id).where(Job.status.in_([str(s) for s in RESUMABLE]), Job.updated_at <= cutoff)
    ).all()
    return [job_id for job_id in candidates if leases.holder(session, leases.job_key(job_id)) is None]


def reap_once(session: Session, producer: TaskProducer, *, stale_after_seconds: float) -> list[str]:
    orphans = orphaned_jobs(session, stale_after_seconds=stale_after_seconds)
    for job_id in orphans:
        log.warning("re-enqueueing %s: its worker stopped renewing the lease", job_id)
        producer.send(TaskName.TRAIN_JOB, job_id)
    return orphans


class Reaper(threading.Thread):
    def __init__(
        self, sessions: object, producer: TaskProducer, *, interval: float, stale_after: float
    ) -> None:
        super().__init__(name="sdft-reaper", daemon=True)
        self.sessions = sessions
        self.producer = producer
        self.interval = interval
        self.stale_after = stale_after
        self.stopped = threading.Event()

    def run(self) -> None:
        from app.db import session_scope

        while not self.stopped.wait(self.interval):
            try:
                with session_scope(self.sessions) as session:  # type: ignore[arg-type]
                    reap_once(session, self.producer, stale_after_seconds=self.stale_after)
            except Exception as exc:  # the database or broker is down: try again next round
                log.warning("reaper round failed: %s", exc)
