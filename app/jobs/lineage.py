"""What a stage inherits from its lineage, derived from the jobs that made each ancestor (so nothing
extra is stored and the answer cannot drift from the registry): the suites a candidate is gated on
(every earlier skill's suites, every general suite attached along the way, and the new skill's), and
the training files of earlier stages (for replay and the retention pool)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.evaluation.gate import Role
from app.jobs import service as jobs
from app.jobs.models import Job
from app.registry import service as registry


def _stage_suites(job: Job, skill: str) -> list[str]:
    for stage in job.request["stages"]:
        if stage["skill"] == skill:
            return list(stage["suites"])
    return []


def suite_roles(session: Session, job: Job, stage_index: int, parent_id: str) -> dict[str, Role]:
    """suite id -> role, priors first (lineage order, root first), then the new skill's suites."""
    prior: list[str] = []
    for version in reversed(registry.lineage(session, parent_id)):
        if version.job_id is None or version.skill is None:
            continue
        maker = jobs.get_job(session, version.job_id)
        prior += _stage_suites(maker, version.skill) + list(maker.request.get("general_suites", []))
    prior += list(job.request.get("general_suites", []))
    new = list(job.request["stages"][stage_index]["suites"])
    roles: dict[str, Role] = {}
    for suite_id in prior:
        if suite_id not in new:
            roles.setdefault(suite_id, "prior")
    for suite_id in new:
        roles[suite_id] = "new_skill"
    return roles


def training_files(session: Session, parent_id: str) -> list[str]:
    """The training files that made each trained ancestor of `parent_id` (itself included), root first."""
    found = []
    for version in reversed(registry.lineage(session, parent_id)):
        if version.job_id is None or version.skill is None:
            continue
        maker = jobs.get_job(session, version.job_id)
        found += [
            stage["training_file"] for stage in maker.request["stages"] if stage["skill"] == version.skill
        ]
    return found
