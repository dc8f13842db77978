"""How a job ends badly, in one place: `JobFailed` ends it with a reason and no retry; `LeaseLost`
means another worker took it over, so this one stops without touching it; `fail_job` records a failure."""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.jobs import service as jobs
from app.jobs.states import JobStatus, is_terminal


class JobFailed(Exception):
    """Bad data, a bad config, out of memory, a teacher that is not ready: retrying would not help."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param

    def to_error(self) -> dict[str, str | None]:
        return {"code": self.code, "message": self.message, "param": self.param}


class LeaseLost(Exception):
    """Another worker took the job over (ours expired): stop without touching it."""


def fail_job(session: Session, job_id: str, failure: JobFailed) -> bool:
    """Move the job to failed from whatever non-terminal status it is in; False if it had ended."""
    job = jobs.get_job(session, job_id)
    status = JobStatus(job.status)
    if is_terminal(status):
        return False
    return jobs.advance(session, job_id, status, JobStatus.FAILED, error=failure.to_error())
