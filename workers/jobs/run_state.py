"""One job being run by this worker: what every phase needs (its id, the worker context, the lease
heartbeat, the file store, where the model runs) and the few reads they share."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from app.jobs import service as jobs
from app.jobs.models import Job
from app.registry import service as registry
from app.storage.base import Store
from workers.jobs import messages
from workers.jobs.claim import Heartbeat
from workers.jobs.context import WorkerContext
from workers.jobs.errors import JobFailed
from workers.models.placement import Placement


@dataclass
class JobRun:
    job_id: str
    ctx: WorkerContext
    heartbeat: Heartbeat
    store: Store
    placement: Placement

    def event(self, session: Session, type_: str, message: str, data: dict[str, Any] | None = None) -> None:
        jobs.append_event(session, job_id=self.job_id, level="info", type=type_, message=message, data=data)

    def warn(self, session: Session, message: str, data: dict[str, Any] | None = None) -> None:
        jobs.append_event(
            session, job_id=self.job_id, level="warn", type="message", message=message, data=data
        )


def current_stage(job: Job) -> tuple[int, dict[str, Any], str]:
    """(index, the stage's request, the parent version id) of the stage the job is at."""
    index = job.current_stage
    stage = job.request["stages"][index]
    parent_id = job.base_version_id if index == 0 else job.candidate_version_ids[index - 1]
    return index, stage, parent_id


def parent_dir(session: Session, version_id: str) -> Path:
    version = registry.get_version(session, version_id)
    path = registry.local_model_dir(version)
    if path is None:
        raise JobFailed("model_unavailable", messages.weights_missing(version_id, version.checkpoint_uri))
    return path
