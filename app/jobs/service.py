"""Jobs: creation (validated, idempotent, enqueued after commit), status moves by compare-and-set,
events. Plain functions with keyword arguments; the Celery workers call `advance`, `update_progress`
and `append_event` inside their own `app.db.session_scope`.

Nothing here commits: the caller's session boundary does, and the job's message leaves only then.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import ColumnElement, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.util import identity_key

from app.auth.service import Principal, Scope, can_see, team_filter
from app.db import new_id, now
from app.errors import Conflict, Forbidden, NotFound, Unprocessable
from app.files import service as files
from app.files.service import FilePurpose
from app.jobs.models import Job, JobEvent, JobTransition
from app.jobs.schemas import JobCreate, StageCreate
from app.jobs.states import JobStatus, check_transition, is_terminal
from app.pagination import paginate
from app.queue import TaskName, enqueue_after_commit
from app.registry import service as registry
from app.registry.models import Alias
from app.suites import service as suites
from app.training.stage_config import ConfigError, parse_stage_config, resolve
from app.webhooks import service as webhooks
from app.webhooks.schemas import EventType

# Columns a worker may set along with a status move (status and timestamps are managed here).
JOB_FIELDS = frozenset({"current_stage", "step", "total_steps", "metrics", "error", "candidate_version_ids"})
CANCEL_ATTEMPTS = 5


class EventLevel(StrEnum):
    INFO = "info"
    WARN = "warn"
    ERROR = "error"


# --------------------------------------------------------------------------- creation


def request_sha256(body: JobCreate) -> str:
    """Hash of the parsed body, so key order and whitespace do not make a retry look different."""
    dump = body.model_dump(mode="json")
    if not dump["metadata"]:  # so a request from before metadata existed hashes as it did
        del dump["metadata"]
    canonical = json.dumps(dump, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _check_suites(session: Session, suite_ids: Sequence[str], param: str, viewer: Principal) -> None:
    seen: set[str] = set()
    for j, suite_id in enumerate(suite_ids):
        if suite_id in seen:
            raise Unprocessable(
                f"suite {suite_id} is listed twice", code="duplicate_suite", param=f"{param}[{j}]"
            )
        seen.add(suite_id)
        suites.get_suite(session, suite_id, param=f"{param}[{j}]", viewer=viewer)


def _validated_stage(
    session: Session, principal: Principal, stage: StageCreate, index: int
) -> dict[str, Any]:
    where = f"stages[{index}]"
    if "method" in stage.hyperparameters:
        raise Unprocessable(
            "set method on the stage, not in hyperparameters",
            code="invalid_hyperparameters",
            param=f"{where}.hyperparameters.method",
        )
    training_file = files.require_ready_file(
        session,
        stage.training_file,
        purpose=FilePurpose.DEMONSTRATIONS,
        param=f"{where}.training_file",
        viewer=principal,
    )
    _check_suites(session, stage.suites, f"{where}.suites", principal)
    try:
        config = parse_stage_config({**stage.hyperparameters, "method": stage.method})
    except ConfigError as exc:
        key, _reason = exc.problems[0]
        details = "; ".join(f"{k}: {r}" for k, r in exc.problems)
        raise Unprocessable(
            f"invalid hyperparameters: {details}",
            code="invalid_hyperparameters",
            param=f"{where}.hyperparameters.{key}",
        ) from None
    rows = int(training_file.preflight["rows"])
    return {
        **stage.model_dump(mode="json"),
        "rows": rows,
        "config": config.model_dump(mode="json"),
        "resolved": resolve(config, rows).model_dump(mode="json"),
    }


def _promotion_target(session: Session, principal: Principal, body: JobCreate, base_id: str) -> str | None:
    """The version `auto_promote`'s alias points at now (None: it does not exist yet), recorded so the
    job moves it only if nobody moved it meanwhile. Moving an alias needs the models:promote scope,
    and the job must build on that version or a descendant of it: from an older one, its candidate
    would replace the alias's version and drop what that learned since."""
    if body.auto_promote is None:
        return None
    if not principal.has(Scope.MODELS_PROMOTE):
        raise Forbidden(
            "auto_promote moves an alias, which needs the models:promote scope",
            code="insufficient_scope",
            param="auto_promote",
        )
    alias = session.get(Alias, body.auto_promote)
    if alias is None:
        return None
    if alias.model_version_id not in {v.id for v in registry.lineage(session, base_id)}:
        raise Conflict(
            f"{body.auto_promote} points at {alias.model_version_id}, which {base_id} does not descend "
            f"from: the candidate would replace it and drop what it learned. Build on "
            f"alias:{body.auto_promote}, or promote by hand after the job",
            code="auto_promote_off_lineage",
            param="auto_promote",
        )
    return alias.model_version_id


def _buildable_base(session: Session, ref: str) -> str:
    """The base's version id. A job builds on an accepted version, or on one an alias points at (a
    rejected version promoted with force and a reason): its gate compares with the parent alone, so a
    version the gate rejected, or has not judged, would pass its losses on as the new baseline."""
    base = registry.resolve_version_ref(session, ref, param="base")
    if base.status == registry.VersionStatus.ACCEPTED or registry.aliases_of(session, base.id):
        return base.id
    raise Conflict(
        f"{base.id} is {base.status}; a job builds on an accepted version, or on one an alias points at "
        "(a rejected version is promoted only with force and a reason)",
        code="version_not_accepted",
        param="base",
    )


def _validated_request(session: Session, principal: Principal, body: JobCreate) -> tuple[str, dict[str, Any]]:
    base_id = _buildable_base(session, body.base)
    skills: set[str] = set()
    stages = []
    for i, stage in enumerate(body.stages):
        if stage.skill in skills:
            raise Unprocessable(
                f"skill {stage.skill!r} appears twice; one stage per skill",
                code="duplicate_skill",
                param=f"stages[{i}].skill",
            )
        skills.add(stage.skill)
        stages.append(_validated_stage(session, principal, stage, i))
    _check_suites(session, body.general_suites, "general_suites", principal)
    request = {
        "base": body.base,
        "stages": stages,
        "general_suites": body.general_suites,
        "auto_promote": body.auto_promote,
        "auto_promote_expected": _promotion_target(session, principal, body, base_id),
        "require_improvement": body.require_improvement,
    }
    return base_id, request


def _replay(session: Session, principal: Principal, key: str, body_sha256: str) -> Job | None:
    job = session.scalar(
        select(Job).where(Job.owner_token_id == principal.token_id, Job.idempotency_key == key)
    )
    if job is not None and job.request_sha256 != body_sha256:
        raise Conflict(
            f"Idempotency-Key {key!r} was used for a different request ({job.id})",
            code="idempotency_key_reused",
            param="Idempotency-Key",
        )
    return job


def create_job(
    session: Session, *, principal: Principal, body: JobCreate, idempotency_key: str | None = None
) -> tuple[Job, bool]:
    """Validate and insert a job in `validating`, and send `sdft.jobs.run(job_id)` after commit.

    Returns (job, replayed). The same Idempotency-Key with the same body returns the first job
    (re-enqueued if it never left `validating`: its first message may have been lost to a broker
    outage, and workers claim jobs by compare-and-set, so a duplicate message is harmless).
    """
    body_sha256 = request_sha256(body)
    if idempotency_key is not None:
        existing = _replay(session, principal, idempotency_key, body_sha256)
        if existing is not None:
            if existing.status == JobStatus.VALIDATING:
                enqueue_after_commit(session, TaskName.VALIDATE_JOB, existing.id)
            return existing, True
    base_version_id, request = _validated_request(session, principal, body)
    timestamp = now()
    job = Job(
        id=new_id("job"),
        owner_token_id=principal.token_id,
        team=principal.team,
        status=JobStatus.VALIDATING,
        base_version_id=base_version_id,
        request=request,
        current_stage=0,
        candidate_version_ids=[],
        meta=dict(body.metadata),
        deliveries=0,
        idempotency_key=idempotency_key,
        request_sha256=body_sha256,
        created_at=timestamp,
        updated_at=timestamp,
        status_changed_at=timestamp,
    )
    try:
        with session.begin_nested():
            session.add(job)
    except IntegrityError:
        # The same key raced us: the winner's job is the answer (or a 409 if its body differs).
        assert idempotency_key is not None
        winner = _replay(session, principal, idempotency_key, body_sha256)
        if winner is None:
            raise
        return winner, True
    append_event(
        session,
        job_id=job.id,
        level=EventLevel.INFO,
        type="status",
        message="job created; validating",
        data={"status": str(JobStatus.VALIDATING)},
    )
    enqueue_after_commit(session, TaskName.VALIDATE_JOB, job.id)
    return job, False


# --------------------------------------------------------------------------- reads


def get_job(session: Session, job_id: str, *, viewer: Principal | None = None) -> Job:
    """The job; 404 when it does not exist or belongs to another team than `viewer`'s."""
    job = session.get(Job, job_id)
    if job is None or not can_see(viewer, job.team):
        raise NotFound(f"no job {job_id!r}", code="job_not_found", param="id")
    return job


def list_jobs(
    session: Session,
    *,
    viewer: Principal,
    status: JobStatus | None,
    base: str | None,
    after: str | None,
    limit: int,
    metadata: dict[str, str] | None = None,
) -> tuple[Sequence[Job], bool]:
    """A page of the jobs `viewer` may see, newest first; `metadata`: jobs with every key = value."""
    filters: list[ColumnElement[bool]] = team_filter(viewer, Job.team)
    if status is not None:
        filters.append(Job.status == str(status))
    if base is not None:
        filters.append(Job.base_version_id == base)
    for key, value in (metadata or {}).items():
        filters.append(Job.meta[key].as_string() == value)
    return paginate(session, select(Job).where(*filters), Job.id, after=after, limit=limit)


def events_page(
    session: Session, job_id: str, *, after: str | None, limit: int
) -> tuple[Sequence[JobEvent], bool]:
    """A page of a job's events, newest first; `after` is an event id."""
    after_seq = event_seq(session, job_id, after, param="after") if after else None
    stmt = select(JobEvent).where(JobEvent.job_id == job_id)
    return paginate(session, stmt, JobEvent.seq, after=after_seq, limit=limit)


def status_of(session: Session, job_id: str) -> str | None:
    return session.scalar(select(Job.status).where(Job.id == job_id))


# --------------------------------------------------------------------------- status moves


def _expire_job(session: Session, job_id: str) -> None:
    """Bulk UPDATEs bypass the identity map: make a loaded Job re-read its row."""
    job = session.identity_map.get(identity_key(Job, job_id))
    if job is not None:
        session.expire(job)


def advance(
    session: Session, job_id: str, from_status: JobStatus, to_status: JobStatus, **fields: Any
) -> bool:
    """Move a job from `from_status` to `to_status` if it is still in `from_status` (compare-and-set).

    Returns False when another process moved it first (the caller re-reads and decides). Raises
    InvalidTransition (409) for a move the table forbids, ValueError for a field outside JOB_FIELDS.
    Also sets started_at / finished_at, logs the move in job_transition and as a `status` event, and
    records a `job.status_changed` webhook event for the team's subscribers (sent after the commit).
    """
    from_status, to_status = JobStatus(from_status), JobStatus(to_status)
    check_transition(from_status, to_status)
    unknown = set(fields) - JOB_FIELDS
    if unknown:
        raise ValueError(f"advance() cannot set {sorted(unknown)}; allowed: {sorted(JOB_FIELDS)}")
    found = session.execute(select(Job.status_changed_at, Job.team).where(Job.id == job_id)).first()
    if found is None:
        raise NotFound(f"no job {job_id!r}", code="job_not_found", param="id")
    changed_at, team = found
    timestamp = now()
    values: dict[str, Any] = {
        **fields,
        "status": str(to_status),
        "updated_at": timestamp,
        "status_changed_at": timestamp,
    }
    if to_status == JobStatus.RUNNING:
        values["started_at"] = func.coalesce(Job.started_at, timestamp)
    if is_terminal(to_status):
        values["finished_at"] = timestamp
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == str(from_status))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return False
    _expire_job(session, job_id)
    session.add(
        JobTransition(
            job_id=job_id,
            from_status=str(from_status),
            to_status=str(to_status),
            seconds_in_from=max(0, timestamp - changed_at),
            created_at=timestamp,
        )
    )
    level = EventLevel.ERROR if to_status == JobStatus.FAILED else EventLevel.INFO
    data: dict[str, Any] = {"from": str(from_status), "to": str(to_status)}
    if fields.get("error"):
        data["error"] = fields["error"]
    append_event(
        session, job_id=job_id, level=level, type="status", message=f"{from_status} -> {to_status}", data=data
    )
    webhooks.record_event(
        session,
        type=EventType.JOB_STATUS_CHANGED,
        data={"job_id": job_id, **data},
        team=team,
        job_id=job_id,
    )
    return True


def update_progress(session: Session, job_id: str, *, expected_status: JobStatus, **fields: Any) -> bool:
    """Set step / total_steps / metrics / current_stage / ... while the job is still in `expected_status`.
    False when the job moved on (e.g. it was cancelled): the worker should stop."""
    unknown = set(fields) - JOB_FIELDS
    if unknown:
        raise ValueError(f"update_progress() cannot set {sorted(unknown)}; allowed: {sorted(JOB_FIELDS)}")
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == str(JobStatus(expected_status)))
        .values(**fields, updated_at=now())
        .execution_options(synchronize_session=False)
    )
    _expire_job(session, job_id)
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def cancel_job(session: Session, *, job_id: str, actor: str, viewer: Principal | None = None) -> Job:
    """Compare-and-set the job to cancelled from whatever non-terminal status it is in; 409 if it ended.
    Workers notice through a failed advance/update_progress and stop."""
    for _attempt in range(CANCEL_ATTEMPTS):
        job = get_job(session, job_id, viewer=viewer)
        session.refresh(job)
        status = JobStatus(job.status)
        if is_terminal(status):
            raise Conflict(f"{job_id} already {status}", code="job_finished", param="id")
        if advance(session, job_id, status, JobStatus.CANCELLED):
            append_event(
                session, job_id=job_id, level=EventLevel.WARN, type="message", message=f"cancelled by {actor}"
            )
            session.refresh(job)
            return job
    raise Conflict(f"{job_id} kept changing status; retry", code="job_busy", param="id")


# --------------------------------------------------------------------------- events


def append_event(
    session: Session,
    *,
    job_id: str,
    level: EventLevel | str,
    type: str,
    message: str,
    data: dict[str, Any] | None = None,
) -> JobEvent:
    """Append one event a user will see (`type`: status, message, metrics, stage, checkpoint, gate...).

    Takes the job's row lock first (PostgreSQL; SQLite writers are serialised anyway): an event's seq
    is drawn at insert but seen at commit, and the event stream reads "seq > last sent". Without the
    lock a transaction could commit seq 2 while seq 1 was still uncommitted, and the stream skip it.
    FOR NO KEY UPDATE, the lock an UPDATE of the job takes: a full FOR UPDATE would also wait for
    rows being inserted that point at the job (a version being registered), and deadlock with them.
    """
    session.execute(select(Job.id).where(Job.id == job_id).with_for_update(key_share=True))
    event = JobEvent(
        id=new_id("evt"),
        job_id=job_id,
        created_at=now(),
        level=str(EventLevel(level)),
        type=type,
        message=message,
        data=data,
    )
    session.add(event)
    session.flush()
    return event


def event_seq(session: Session, job_id: str, event_id: str, *, param: str) -> int:
    seq = session.scalar(select(JobEvent.seq).where(JobEvent.id == event_id, JobEvent.job_id == job_id))
    if seq is None:
        raise NotFound(f"no event {event_id!r} in {job_id}", code="event_not_found", param=param)
    return seq


def events_after(session: Session, job_id: str, after_seq: int, limit: int) -> Sequence[JobEvent]:
    """Events oldest first after a sequence number (for streaming)."""
    return session.scalars(
        select(JobEvent)
        .where(JobEvent.job_id == job_id, JobEvent.seq > after_seq)
        .order_by(JobEvent.seq)
        .limit(limit)
    ).all()


@dataclass(frozen=True)
class JobLog:
    """What a job page shows of its log, all up to `last_event_id` (where the page's stream starts)."""

    newest: list[JobEvent]  # the newest events other than metrics, oldest first
    count: int  # how many events other than metrics there are in all
    of_types: list[JobEvent]  # every event of the types asked for, oldest first
    last_event_id: str


def job_log(session: Session, job_id: str, *, newest: int, types: Collection[str]) -> JobLog:
    """A job's log for its page: metrics are charted from `metrics_rows`, not listed."""
    last = session.scalars(
        select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.seq.desc()).limit(1)
    ).first()
    if last is None:
        return JobLog([], 0, [], "")
    # Up to the last event read first: one appended meanwhile comes by the stream, not twice.
    listed = (JobEvent.job_id == job_id, JobEvent.seq <= last.seq, JobEvent.type != "metrics")
    shown = session.scalars(select(JobEvent).where(*listed).order_by(JobEvent.seq.desc()).limit(newest)).all()
    return JobLog(
        newest=list(reversed(shown)),
        count=session.scalar(select(func.count()).select_from(JobEvent).where(*listed)) or 0,
        of_types=list(
            session.scalars(select(JobEvent).where(*listed, JobEvent.type.in_(types)).order_by(JobEvent.seq))
        ),
        last_event_id=last.id,
    )


def metrics_rows(session: Session, job_id: str) -> list[dict[str, Any]]:
    """One row per training step (the `metrics` events' data) in step order: by stage, then step. A
    step logged twice (a task resumed from a checkpoint redid it) keeps its last values."""
    rows: dict[tuple[int, int], dict[str, Any]] = {}
    datas = session.scalars(
        select(JobEvent.data)
        .where(JobEvent.job_id == job_id, JobEvent.type == "metrics")
        .order_by(JobEvent.seq)
    )
    for data in datas:
        if isinstance(data, dict) and isinstance(data.get("step"), int):
            stage = data.get("stage")
            rows[(stage if isinstance(stage, int) else 0, data["step"])] = data
    return [rows[key] for key in sorted(rows)]
