"""An error a Celery task raises crosses from the pool process to the worker's main process pickled:
every AppError must survive that (one that cannot be rebuilt stops the whole worker)."""

from __future__ import annotations

import pickle

from celery.utils.serialization import get_pickleable_exception

from app.errors import AppError, Conflict, NotFound
from app.jobs.states import InvalidTransition, JobStatus


def test_app_errors_survive_pickling() -> None:
    errors: list[AppError] = [
        NotFound("no job 'job_x'", code="job_not_found", param="id"),
        Conflict("busy", code="job_busy", details={"retry": True}, headers={"Retry-After": "1"}),
        InvalidTransition(JobStatus.QUEUED, JobStatus.SUCCEEDED),
    ]
    for error in errors:
        rebuilt = pickle.loads(pickle.dumps(error))
        assert type(rebuilt) is type(error) and rebuilt.body() == error.body()
        assert (rebuilt.status, rebuilt.headers, str(rebuilt)) == (error.status, error.headers, str(error))
        assert get_pickleable_exception(error) is error  # Celery sends it as it is, unwrapped
    transition = pickle.loads(pickle.dumps(errors[2]))
    assert isinstance(transition, InvalidTransition) and transition.from_status == JobStatus.QUEUED
