"""Model versions, lineage and scores. Plain functions with keyword arguments, called by the API and by
the Celery workers (which own their session and commit through `app.db.session_scope`).

None of these functions commit; they flush so ids and constraint errors surface inside the caller's
transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum, StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, func, literal, select, type_coerce, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.auth.service import Principal, can_see
from app.contracts.artifacts import model_dir_sha256
from app.db import new_id, now
from app.errors import Conflict, NotFound, Unprocessable
from app.jobs.models import Job
from app.pagination import paginate
from app.registry.model_dir import model_dir_problems
from app.registry.models import Alias, ModelVersion, Score
from app.storage import file_uri_to_path
from app.suites.models import Suite
from app.webhooks import service as webhooks
from app.webhooks.schemas import EventType

ALIAS_REF_PREFIX = "alias:"
MAX_LINEAGE_DEPTH = 10_000


class Unchanged(Enum):
    """A field a PATCH left out (None would clear it)."""

    UNCHANGED = "unchanged"


UNCHANGED = Unchanged.UNCHANGED


class VersionStatus(StrEnum):
    CANDIDATE = "candidate"  # trained, gate not decided yet
    ACCEPTED = "accepted"  # gate passed (registered base models start here)
    REJECTED = "rejected"  # gate said no; kept for inspection, promotable only with force + reason


def get_version(session: Session, version_id: str, *, param: str = "id") -> ModelVersion:
    version = session.get(ModelVersion, version_id)
    if version is None:
        raise NotFound(f"no model version {version_id!r}", code="model_not_found", param=param)
    return version


def resolve_version_ref(session: Session, ref: str, *, param: str) -> ModelVersion:
    """A version id, or ``alias:NAME`` for the version the alias points at now."""
    if ref.startswith(ALIAS_REF_PREFIX):
        name = ref.removeprefix(ALIAS_REF_PREFIX)
        alias = session.get(Alias, name)
        if alias is None:
            raise NotFound(f"no alias {name!r}", code="alias_not_found", param=param)
        return get_version(session, alias.model_version_id, param=param)
    return get_version(session, ref, param=param)


def local_model_dir(version: ModelVersion) -> Path | None:
    """The directory of a version's checkpoint when it is on this machine's filesystem."""
    try:
        path = file_uri_to_path(version.checkpoint_uri)
    except ValueError:
        return None
    return path if path.is_dir() else None


def register_base(
    session: Session, *, path: Path, name: str, description: str | None
) -> tuple[ModelVersion, bool]:
    """Register a base model directory as a lineage root; returns (version, created).

    The checkpoint uri is ``file://<path>``: registration records where the model is and its sha256
    rather than copying gigabytes into storage. Registering the same path again returns the existing
    version while its files are unchanged, and is a 409 once they changed (the old sha256 would lie).
    """
    problems = model_dir_problems(path)
    if problems:
        raise Unprocessable(
            f"{path} is not a usable chat model: {'; '.join(problems)}", code="invalid_model", param="path"
        )
    directory = path.resolve()
    sha256 = model_dir_sha256(directory)
    uri = directory.as_uri()
    existing = session.scalar(
        select(ModelVersion).where(ModelVersion.checkpoint_uri == uri, ModelVersion.parent_id.is_(None))
    )
    if existing is not None:
        if existing.checkpoint_sha256 != sha256:
            raise Conflict(
                f"{directory} is registered as {existing.id} with other contents (sha256 "
                f"{existing.checkpoint_sha256[:12]}...); register the new weights from a new directory",
                code="model_changed",
                param="path",
            )
        return existing, False
    version_id = new_id("mv")
    version = ModelVersion(
        id=version_id,
        name=name,
        description=description,
        parent_id=None,
        base_id=version_id,
        number=0,
        job_id=None,
        skill=None,
        checkpoint_uri=uri,
        checkpoint_sha256=sha256,
        status=VersionStatus.ACCEPTED,
        gate_report=None,
        training=None,
        created_at=now(),
    )
    session.add(version)
    session.flush()
    return version, True


def register_version(
    session: Session,
    *,
    parent_id: str,
    job_id: str,
    skill: str,
    checkpoint_uri: str,
    checkpoint_sha256: str,
    status: VersionStatus = VersionStatus.CANDIDATE,
    gate_report: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
) -> ModelVersion:
    """Record a trained version as a child of `parent_id`. Idempotent per (job_id, skill): a redelivered
    worker task gets the version it registered the first time, unchanged. A new version is a
    `version.registered` webhook event for the job's team."""
    existing = session.scalar(
        select(ModelVersion).where(ModelVersion.job_id == job_id, ModelVersion.skill == skill)
    )
    if existing is not None:
        return existing
    parent = get_version(session, parent_id, param="parent_id")
    for _attempt in range(3):  # another registration in the same lineage may take the number first
        number = (
            session.scalar(
                select(func.max(ModelVersion.number)).where(ModelVersion.base_id == parent.base_id)
            )
            or 0
        ) + 1
        version = ModelVersion(
            id=new_id("mv"),
            name=None,
            description=None,
            parent_id=parent.id,
            base_id=parent.base_id,
            number=number,
            job_id=job_id,
            skill=skill,
            checkpoint_uri=checkpoint_uri,
            checkpoint_sha256=checkpoint_sha256,
            status=VersionStatus(status),
            gate_report=gate_report,
            training=training,
            created_at=now(),
        )
        try:
            with session.begin_nested():
                session.add(version)
        except IntegrityError:
            existing = session.scalar(
                select(ModelVersion).where(ModelVersion.job_id == job_id, ModelVersion.skill == skill)
            )
            if existing is not None:
                return existing
            continue
        team = session.scalar(select(Job.team).where(Job.id == job_id))
        if team is None:  # (the foreign key makes this impossible; never announce to every team)
            return version
        webhooks.record_event(
            session,
            type=EventType.VERSION_REGISTERED,
            data={
                "version_id": version.id,
                "job_id": job_id,
                "skill": skill,
                "parent_id": parent.id,
                "base_id": parent.base_id,
                "number": number,
                "status": str(version.status),
            },
            team=team,
            job_id=job_id,
        )
        return version
    raise Conflict("could not allocate a version number; retry", code="version_number_race")


def decide_version(
    session: Session, *, version_id: str, status: VersionStatus, gate_report: dict[str, Any] | None
) -> bool:
    """Compare-and-set a candidate to accepted or rejected with its gate report; False if already decided."""
    if status == VersionStatus.CANDIDATE:
        raise ValueError("a decision is accepted or rejected")
    result = session.execute(
        update(ModelVersion)
        .where(ModelVersion.id == version_id, ModelVersion.status == VersionStatus.CANDIDATE)
        .values(status=str(status), gate_report=gate_report)
        .execution_options(synchronize_session="fetch")
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def lineage(session: Session, version_id: str) -> list[ModelVersion]:
    """The version, its parent, ... up to the root (a registered base model)."""
    chain = [get_version(session, version_id)]
    while chain[-1].parent_id is not None:
        if len(chain) > MAX_LINEAGE_DEPTH:
            raise RuntimeError(f"lineage of {version_id} deeper than {MAX_LINEAGE_DEPTH}: a cycle?")
        chain.append(get_version(session, chain[-1].parent_id))
    return chain


def record_score(
    session: Session,
    *,
    model_version_id: str,
    suite_sha256: str,
    decoding_hash: str,
    score: float,
    n: int,
    per_item: Sequence[Any],
    ci_low: float | None = None,
    ci_high: float | None = None,
    suite_id: str | None = None,
) -> Score:
    """Store one suite score of a version under one decoding setup. Idempotent: the first recorded
    score for (version, suite sha256, decoding hash) is kept and returned, as evaluation is deterministic
    for a fixed key."""
    version = get_version(session, model_version_id, param="model_version_id")
    key = (
        Score.model_version_id == version.id,
        Score.suite_sha256 == suite_sha256,
        Score.decoding_hash == decoding_hash,
    )
    existing = session.scalar(select(Score).where(*key))
    if existing is not None:
        return existing
    row = Score(
        id=new_id("score"),
        model_version_id=version.id,
        checkpoint_sha256=version.checkpoint_sha256,
        suite_id=suite_id,
        suite_sha256=suite_sha256,
        decoding_hash=decoding_hash,
        score=score,
        ci_low=ci_low,
        ci_high=ci_high,
        n=n,
        per_item=list(per_item),
        created_at=now(),
    )
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError:
        existing = session.scalar(select(Score).where(*key))
        if existing is None:
            raise
        return existing
    return row


def get_cached_score(
    session: Session,
    *,
    suite_sha256: str,
    decoding_hash: str,
    model_version_id: str | None = None,
    checkpoint_sha256: str | None = None,
) -> Score | None:
    """A recorded score for this suite and decoding setup, looked up by version id or by checkpoint
    sha256 (the same weights registered twice share scores)."""
    if (model_version_id is None) == (checkpoint_sha256 is None):
        raise ValueError("give exactly one of model_version_id and checkpoint_sha256")
    stmt = select(Score).where(Score.suite_sha256 == suite_sha256, Score.decoding_hash == decoding_hash)
    if model_version_id is not None:
        stmt = stmt.where(Score.model_version_id == model_version_id)
    else:
        stmt = stmt.where(Score.checkpoint_sha256 == checkpoint_sha256)
    return session.scalars(stmt.order_by(Score.id).limit(1)).first()


def list_scores(session: Session, version_id: str) -> Sequence[Score]:
    get_version(session, version_id)
    return session.scalars(select(Score).where(Score.model_version_id == version_id).order_by(Score.id)).all()


def aliases_of(session: Session, version_id: str) -> list[str]:
    return list(
        session.scalars(select(Alias.name).where(Alias.model_version_id == version_id).order_by(Alias.name))
    )


def version_label(version: ModelVersion) -> str:
    return version.name or f"v{version.number} {version.skill}"


def _has_tag(session: Session, tag: str) -> ColumnElement[bool]:
    """`tag` is in the version's tags: JSONB containment on PostgreSQL, json_each on SQLite."""
    if session.get_bind().dialect.name == "postgresql":
        return type_coerce(ModelVersion.tags, JSONB).contains([tag])
    values = func.json_each(ModelVersion.tags).table_valued("value")
    return select(literal(1)).select_from(values).where(values.c.value == tag).exists()


def list_versions(
    session: Session,
    *,
    status: VersionStatus | None,
    base: str | None,
    after: str | None,
    limit: int,
    skill: str | None = None,
    alias: str | None = None,
    tag: str | None = None,
) -> tuple[Sequence[ModelVersion], bool]:
    """A page of versions, newest first, filtered by status, lineage (root id), skill, the alias that
    points at it, or a tag (every filter given must hold)."""
    stmt = select(ModelVersion)
    if status is not None:
        stmt = stmt.where(ModelVersion.status == str(status))
    if base is not None:
        stmt = stmt.where(ModelVersion.base_id == base)
    if skill is not None:
        stmt = stmt.where(ModelVersion.skill == skill)
    if alias is not None:
        stmt = stmt.where(ModelVersion.id.in_(select(Alias.model_version_id).where(Alias.name == alias)))
    if tag is not None:
        stmt = stmt.where(_has_tag(session, tag))
    return paginate(session, stmt, ModelVersion.id, after=after, limit=limit)


def update_version(
    session: Session,
    version_id: str,
    *,
    description: str | Unchanged | None = UNCHANGED,
    tags: list[str] | None = None,
) -> ModelVersion:
    """Set a version's description and/or tags (None: leave them); nothing else about it changes."""
    version = get_version(session, version_id)
    if not isinstance(description, Unchanged):
        version.description = description
    if tags is not None:
        version.tags = list(tags)
    session.flush()
    return version


def suites_readable_by(session: Session, viewer: Principal, scores: Sequence[Score]) -> set[str | None]:
    """The suite ids among `scores` whose per-item outputs `viewer` may read; None (a score whose suite
    row is gone, or that was recorded by sha alone) only for admins, who may read everything."""
    if viewer.is_admin:
        return {score.suite_id for score in scores}
    ids = {score.suite_id for score in scores if score.suite_id is not None}
    if not ids:
        return set()
    teams: dict[str, str] = dict(
        session.execute(select(Suite.id, Suite.team).where(Suite.id.in_(ids))).tuples().all()
    )
    return {suite_id for suite_id, team in teams.items() if can_see(viewer, team)}
