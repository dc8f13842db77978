"""The first message a new job gets: re-validate its inputs where the weights and files live, then
queue its training (validating -> queued, and send the training task after that commit), or fail it
with every problem found."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sqlalchemy.orm import Session

from app.contracts.demonstrations import DatasetError, parse_demonstrations
from app.errors import AppError
from app.evaluation.suites import EvalSuite
from app.files import service as files
from app.jobs import service as jobs
from app.jobs.states import JobStatus
from app.queue import TaskName, enqueue_after_commit
from app.registry import service as registry
from app.storage.base import Store
from app.suites import service as suites_service

MAX_ITEMS_NAMED = 3


def _prompt_checker(model_dir: Path | None) -> Callable[[EvalSuite], list[str]]:
    """Problems of a suite's items on the base's tokenizer and context (what fails on every version
    of it: too long, or rejected by the chat template); nothing to check without the weights."""
    if model_dir is None:
        return lambda suite: []
    from workers.evaluation.runner import suite_prompt_problems
    from workers.models.loading import load_tokenizer, model_dir_context_length

    tokenizer = load_tokenizer(model_dir)
    context_length = model_dir_context_length(model_dir)
    return lambda suite: suite_prompt_problems(suite, tokenizer, context_length)


def validate_job(session: Session, store: Store, job_id: str) -> str:
    job = jobs.get_job(session, job_id)
    if job.status != JobStatus.VALIDATING:
        return f"nothing to do: {job_id} is {job.status}"
    problems: list[str] = []
    base = registry.get_version(session, job.base_version_id)
    model_dir = registry.local_model_dir(base)
    if model_dir is None:
        problems.append(f"base: the weights of {base.id} ({base.checkpoint_uri}) are not reachable")
    try:
        check_prompts = _prompt_checker(model_dir)
    except (OSError, ValueError) as exc:
        problems.append(f"base: the tokenizer of {base.id} does not load: {exc}")
        check_prompts = _prompt_checker(None)

    def check_suite(field: str, suite_id: str) -> None:
        try:
            suite = suites_service.load_suite(session, store, suite_id)
        except (AppError, RuntimeError, OSError) as exc:
            problems.append(f"{field}: {suite_id}: {exc}")
            return
        found = check_prompts(suite)
        if found:
            more = f" (and {len(found) - MAX_ITEMS_NAMED} more)" if len(found) > MAX_ITEMS_NAMED else ""
            problems.append(
                f"{field}: {suite_id}: {len(found)} item(s) cannot be evaluated on this model, on any "
                f"version of it, so every gate would fail: {'; '.join(found[:MAX_ITEMS_NAMED])}{more}"
            )

    for i, stage in enumerate(job.request["stages"]):
        try:
            parse_demonstrations(files.read_text(store, files.get_file(session, stage["training_file"])))
        except (DatasetError, AppError, OSError) as exc:
            problems.append(f"stages[{i}].training_file: {exc}")
        for suite_id in stage["suites"]:
            check_suite(f"stages[{i}].suites", suite_id)
    for suite_id in job.request.get("general_suites", []):
        check_suite("general_suites", suite_id)
    if problems:
        error = {"code": "invalid_job", "message": "; ".join(problems), "param": None}
        jobs.advance(session, job_id, JobStatus.VALIDATING, JobStatus.FAILED, error=error)
        return f"failed validation: {error['message']}"
    if jobs.advance(session, job_id, JobStatus.VALIDATING, JobStatus.QUEUED):
        # Not required: a queued job whose message the broker lost is re-sent by the reaper, so a
        # broker outage here must not fail a job that validated.
        enqueue_after_commit(session, TaskName.TRAIN_JOB, job_id, required=False)
    return f"{job_id} queued"
