"""Re-send jobs nobody is working on: queued, running or evaluating, with no live job lease, untouched
for a lease's lifetime.

A worker killed with SIGKILL cannot reject its message; the broker may hold it unacknowledged until
the visibility timeout (hours, so that long jobs are never run twice). The job lease expires within
`lease_ttl_seconds` instead, and a reaper then sends the job again; the task that receives it resumes
the stage from its last checkpoint. A queued job whose message was lost (a broker restart) is sent
again the same way. Every worker runs a reaper, but a job is re-sent once per lease lifetime, by the
reaper that takes its short `reap:` lease first, and never while a job waiting for its lineage holds
that lease; a duplicate message is harmless anyway (a job is run only by the holder of its lease), and
a job re-delivered too often is failed by the task.

Each round also re-sends webhook deliveries whose task was lost (workers/webhooks.py).
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
RESUMABLE = (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.EVALUATING)


def orphaned_jobs(session: Session, *, stale_after_seconds: float) -> list[str]:
    """Jobs in a working status with no live lease, untouched for `stale_after_seconds`."""
    cutoff = int(time.time() - stale_after_seconds)
    candidates = session.scalars(
        select(Job.id).where(Job.status.in_([str(s) for s in RESUMABLE]), Job.updated_at <= cutoff)
    ).all()
    return [job_id for job_id in candidates if leases.holder(session, leases.job_key(job_id)) is None]


def reap_once(
    session: Session, producer: TaskProducer, *, stale_after_seconds: float, reaper_id: str = "reaper"
) -> list[str]:
    """Re-send each orphan this reaper wins the `reap:` lease of (held for a lease lifetime)."""
    sent = []
    for job_id in orphaned_jobs(session, stale_after_seconds=stale_after_seconds):
        key = leases.reap_key(job_id)
        # Held by anyone, this reaper included: a message is already on its way (a re-send within the
        # last lease lifetime, or a job waiting for its lineage, workers/jobs/claim.py).
        if leases.holder(session, key) is not None or not leases.acquire(
            session, key=key, owner=reaper_id, job_id=job_id, ttl_seconds=stale_after_seconds
        ):
            continue
        log.warning("re-sending %s: no worker holds its lease", job_id)
        producer.send(TaskName.TRAIN_JOB, job_id)
        sent.append(job_id)
    return sent


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
        from workers.jobs.context import worker_id
        from workers.webhooks import resend_lost_deliveries

        while not self.stopped.wait(self.interval):
            try:
                with session_scope(self.sessions) as session:  # type: ignore[arg-type]
                    reap_once(
                        session, self.producer, stale_after_seconds=self.stale_after, reaper_id=worker_id()
                    )
                with session_scope(self.sessions) as session:  # type: ignore[arg-type]
                    resend_lost_deliveries(session, self.producer, grace_seconds=self.stale_after)
            except Exception as exc:  # the database or broker is down: try again next round
                log.warning("reaper round failed: %s", exc)
