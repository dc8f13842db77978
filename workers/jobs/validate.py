"""The first message a new job gets: re-validate its inputs where the weights and files live, then
queue its training (validating -> queued, and send the training task after that commit), or fail it
with every problem found."""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.contracts.demonstrations import DatasetError, parse_demonstrations
from app.errors import AppError
from app.files import service as files
from app.jobs import service as jobs
from app.jobs.states import JobStatus
from app.queue import TaskName, enqueue_after_commit
from app.registry import service as registry
from app.storage.base import Store
from app.suites import service as suites_service


def validate_job(session: Session, store: Store, job_id: str) -> str:
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
        # Not required: a queued job whose message the broker lost is re-sent by the reaper, so a
        # broker outage here must not fail a job that validated.
        enqueue_after_commit(session, TaskName.TRAIN_JOB, job_id, required=False)
    return f"{job_id} queued"
