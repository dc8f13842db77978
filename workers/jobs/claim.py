"""Who runs a job: the holder of its job lease, and of its lineage's lease (one writer per lineage).

Leases are renewed from a heartbeat thread while the job runs; when one is lost (this worker stalled
past its TTL and another took the job over), `lost` is set and the job stops at its next check
without touching the job again.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from sqlalchemy.orm import Session

from app.jobs import service as jobs
from app.jobs.states import JobStatus, is_terminal
from app.leases import service as leases
from app.queue import TaskName, enqueue_after_commit
from workers.jobs import messages
from workers.jobs.context import WorkerContext
from workers.jobs.errors import LeaseLost

log = logging.getLogger(__name__)


# Owns a job's reap lease while the job waits for its lineage (every waiting message alike).
LINEAGE_WAIT_OWNER = "lineage-wait"


class LineageBusy(Exception):
    """Another job is extending the same version; this one waits its turn (`wait_for_lineage`)."""

    def __init__(self, holder_job_id: str) -> None:
        super().__init__(f"waiting for {holder_job_id}, which extends the same version")
        self.holder_job_id = holder_job_id


class Heartbeat:
    """Renews the job and lineage leases from a thread while the job runs; `lost` once one is gone."""

    def __init__(self, ctx: WorkerContext, keys: list[str]) -> None:
        self.ctx = ctx
        self.keys = keys
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sdft-lease-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def check(self) -> None:
        if self.lost.is_set():
            raise LeaseLost("the job was taken over by another worker")

    def _run(self) -> None:
        interval = self.ctx.lease_ttl_seconds / 4
        while not self._stop.wait(interval):
            try:
                with self.ctx.session() as session:
                    for key in self.keys:
                        if not leases.renew(
                            session, key=key, owner=self.ctx.worker_id, ttl_seconds=self.ctx.lease_ttl_seconds
                        ):
                            self.lost.set()
            except Exception as exc:  # a database hiccup: try again next beat, the lease has slack
                log.warning("lease heartbeat failed: %s", exc)


@dataclass(frozen=True)
class Claim:
    keys: list[str]
    status: JobStatus


def claim(ctx: WorkerContext, job_id: str) -> Claim | str:
    """Take the job's and its lineage's leases and move a queued job to running; a string says why
    there is nothing to do. Raises LineageBusy when another job holds the lineage."""
    with ctx.session() as session:
        job = jobs.get_job(session, job_id)
        status = JobStatus(job.status)
        if is_terminal(status) or status == JobStatus.VALIDATING:
            return f"nothing to do: {job_id} is {status}"
        keys = [leases.job_key(job_id), leases.lineage_key(job.base_version_id)]
        owner, ttl = ctx.worker_id, ctx.lease_ttl_seconds
        if not leases.acquire(session, key=keys[0], owner=owner, job_id=job_id, ttl_seconds=ttl):
            return f"nothing to do: another worker holds {job_id}"
        if not leases.acquire(
            session, key=keys[1], owner=owner, job_id=job_id, ttl_seconds=ttl, same_job_ok=True
        ):
            holder = leases.holder(session, keys[1])
            leases.release(session, key=keys[0], owner=owner)
            raise LineageBusy(holder.job_id if holder else "another job")
        if status == JobStatus.QUEUED:
            jobs.advance(session, job_id, JobStatus.QUEUED, JobStatus.RUNNING)
            status = JobStatus.RUNNING
        else:
            jobs.append_event(
                session, job_id=job_id, level="info", type="message", message=messages.resumed(owner, status)
            )
    return Claim(keys, status)


def wait_for_lineage(session: Session, job_id: str, *, wait_seconds: float, lease_ttl_seconds: float) -> None:
    """Check again in `wait_seconds`, as long as the other job takes: a fresh message, not a Celery
    retry (retries are counted, and the last would fail a job that only waited). The job's reap lease
    tells the reapers that message is on its way; if it is lost, the lease runs out and a reaper
    re-sends the job."""
    leases.acquire(
        session,
        key=leases.reap_key(job_id),
        owner=LINEAGE_WAIT_OWNER,
        job_id=job_id,
        ttl_seconds=wait_seconds + lease_ttl_seconds,
        same_job_ok=True,  # taken over from a reaper that re-sent this very message
    )
    # Not required: a broker outage here is the lost message above, not an error of this job.
    enqueue_after_commit(session, TaskName.TRAIN_JOB, job_id, countdown=wait_seconds, required=False)


def release(ctx: WorkerContext, keys: list[str]) -> None:
    with ctx.session() as session:
        for key in keys:
            leases.release(session, key=key, owner=ctx.worker_id)
