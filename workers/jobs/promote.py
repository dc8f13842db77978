"""Auto-promotion at the end of a succeeded job: move the alias only if it still points where it
pointed when the job was created (compare-and-set), never over a human's promotion made meanwhile.
A moved alias means: the version is registered and accepted, not promoted, and an event says why."""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.errors import Conflict
from app.jobs import service as jobs
from app.jobs.models import Job
from app.jobs.states import JobStatus
from app.registry.aliases import service as aliases
from workers.jobs import messages


def succeed_and_promote(session: Session, job: Job, version_id: str) -> bool:
    """Record the job as succeeded, then auto-promote; a job cancelled meanwhile is never promoted
    (the compare-and-set from evaluating fails, and the alias stays where it was)."""
    if not jobs.advance(session, job.id, JobStatus.EVALUATING, JobStatus.SUCCEEDED):
        if job.request.get("auto_promote"):
            jobs.append_event(
                session,
                job_id=job.id,
                level="warn",
                type="message",
                message=messages.promotion_cancelled(job.request["auto_promote"]),
            )
        return False
    return promote(session, job, version_id)


def promote(session: Session, job: Job, version_id: str) -> bool:
    name = job.request.get("auto_promote")
    if not name:
        return False
    # Recorded when the job was created: the alias's version then, or None if it did not exist.
    expected = job.request.get("auto_promote_expected")
    try:
        aliases.move(
            session,
            name=name,
            version_id=version_id,
            actor=f"job {job.id}",
            expected_version=expected,
            reason=f"auto_promote after job {job.id} passed its gates",
        )
    except Conflict:
        current = session.get(aliases.Alias, name)
        found = None if current is None else current.model_version_id
        jobs.append_event(
            session,
            job_id=job.id,
            level="warn",
            type="message",
            message=messages.promotion_skipped(name, expected, found, version_id),
        )
        return False
    jobs.append_event(
        session, job_id=job.id, level="info", type="message", message=messages.promoted(name, version_id)
    )
    return True
