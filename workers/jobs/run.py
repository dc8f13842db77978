"""One job on one worker, start to end: claim it, then run the phase its status names until the job
leaves the working statuses, then release it. Every phase is idempotent and the job row (status,
current stage, candidate ids) says where to continue, so a redelivered task resumes a crashed job.

    queued -> running -> evaluating -> running (next stage) ... -> succeeded | rejected

Database transactions are short and never span compute (SQLite has one writer).
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import update

from app.jobs import service as jobs
from app.jobs.models import Job
from app.jobs.states import JobStatus
from app.storage import make_store
from workers.jobs import messages
from workers.jobs.claim import Heartbeat, claim, release
from workers.jobs.context import WorkerContext
from workers.jobs.errors import JobFailed, LeaseLost, fail_job
from workers.jobs.evaluate import evaluate_and_gate
from workers.jobs.run_state import JobRun
from workers.jobs.train import train_stage
from workers.models.placement import default_placement

Phase = Callable[[JobRun, Job], None]
PHASES: dict[JobStatus, Phase] = {JobStatus.RUNNING: train_stage, JobStatus.EVALUATING: evaluate_and_gate}
# A task delivered this many times without the job finishing is failed instead of sent again.
MAX_DELIVERIES = 5


def _count_delivery(ctx: WorkerContext, job_id: str) -> int:
    with ctx.session() as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(deliveries=Job.deliveries + 1)
            .execution_options(synchronize_session=False)
        )
        return int(jobs.get_job(session, job_id).deliveries)


def run_job(job_id: str, ctx: WorkerContext) -> str:
    """Run the job as far as it goes; returns what happened, for the task log. Raises LineageBusy
    when another job holds the lineage (the task checks again later, `wait_for_lineage`)."""
    claimed = claim(ctx, job_id)
    if isinstance(claimed, str):
        return claimed
    try:
        deliveries = _count_delivery(ctx, job_id)
        if deliveries > MAX_DELIVERIES:
            raise JobFailed("too_many_deliveries", messages.too_many_deliveries(deliveries - 1))
        with Heartbeat(ctx, claimed.keys) as heartbeat:
            run = JobRun(
                job_id,
                ctx,
                heartbeat,
                make_store(ctx.settings.storage_path),
                ctx.placement or default_placement(),
            )
            while True:
                with ctx.session() as session:
                    job = jobs.get_job(session, job_id)
                    session.expunge(job)
                phase = PHASES.get(JobStatus(job.status))
                if phase is None:
                    return f"{job_id} is {job.status}"
                phase(run, job)
    except LeaseLost:
        # Another worker holds the job now and carries on with it; this one leaves it alone.
        return f"{job_id}: lease lost to another worker; stopped without touching the job"
    except JobFailed as failure:
        with ctx.session() as session:
            fail_job(session, job_id, failure)
        return f"failed: {failure.code}: {failure.message}"
    finally:
        release(ctx, claimed.keys)
