"""Bind a regression_suite file to a name, a grader and gate settings, validated by app.evaluation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError
from sqlalchemy import exists, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.auth.service import Principal, can_see, team_filter
from app.db import new_id, now
from app.errors import Conflict, NotFound, Unprocessable, loc_to_param
from app.evaluation.suites import DecodingConfig, EvalSuite, SuiteError, SuiteMeta, parse_suite_jsonl
from app.files import service as files
from app.files.service import FilePurpose
from app.pagination import paginate
from app.registry.models import Score
from app.storage import Store
from app.suites.models import Suite
from app.suites.schemas import SuiteCreate

# Scores and lineages are shared across teams, suites are not: another team's suite is shown unnamed.
ANOTHER_TEAMS_SUITE = "another team's suite"


def suite_meta(body: SuiteCreate) -> SuiteMeta:
    """The body's settings as SuiteMeta; every problem is a 422 naming the first offending field."""
    data: dict[str, Any] = {
        "name": body.name,
        "grader": body.grader,
        "tolerance": body.tolerance,
        "min_score": body.min_score,
        "grader_options": body.grader_options,
    }
    if body.decoding is not None:
        data["decoding"] = body.decoding
    try:
        return SuiteMeta.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        message = "; ".join(
            f"{loc_to_param(e['loc'])}: {e['msg'].removeprefix('Value error, ')}" for e in errors
        )
        raise Unprocessable(message, code="invalid_suite", param=loc_to_param(errors[0]["loc"])) from None


def create_suite(
    session: Session, store: Store, *, principal: Principal, body: SuiteCreate
) -> tuple[Suite, bool]:
    """Returns (suite, created). Posting the same name with identical content and settings returns the
    existing suite; the same name with anything different is a 409 (names are unique)."""
    meta = suite_meta(body)
    file_row = files.require_ready_file(
        session, body.file, purpose=FilePurpose.REGRESSION_SUITE, param="file", viewer=principal
    )
    try:
        parsed = parse_suite_jsonl(files.read_text(store, file_row), meta)
    except SuiteError as exc:
        problems = [{"line": p.line, "field": p.field, "reason": p.reason} for p in exc.problems]
        raise Unprocessable(
            f"the file does not fit these suite settings: {exc}",
            code="invalid_suite",
            param="file",
            details={"problems": problems},
        ) from None
    existing = session.scalar(select(Suite).where(Suite.name == meta.name))
    if existing is not None:
        return _same_name(existing, parsed, principal), False
    row = Suite(
        id=new_id("suite"),
        name=meta.name,
        file_id=file_row.id,
        grader=meta.grader,
        tolerance=meta.tolerance,
        min_score=meta.min_score,
        grader_options=dict(meta.grader_options),
        decoding=meta.decoding.model_dump(mode="json"),
        suite_sha256=parsed.sha256,
        num_items=len(parsed),
        created_by=principal.token_id,
        team=principal.team,
        created_at=now(),
    )
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError:  # the same name was created concurrently
        raced = session.scalar(select(Suite).where(Suite.name == meta.name))
        if raced is None:
            raise
        return _same_name(raced, parsed, principal), False
    return row, True


def _same_name(existing: Suite, parsed: EvalSuite, principal: Principal) -> Suite:
    """Posting an existing name: the same suite again is that suite; anything else is a 409. Names are
    unique across teams (the forgetting matrix keys suites by name), but another team's suite stays
    invisible: the 409 names no id."""
    if existing.suite_sha256 == parsed.sha256 and can_see(principal, existing.team):
        return existing
    owned = can_see(principal, existing.team)
    raise Conflict(
        f"a different suite is already named {existing.name!r}" + (f" ({existing.id})" if owned else ""),
        code="suite_exists",
        param="name",
    )


def get_suite(
    session: Session, suite_id: str, *, param: str = "id", viewer: Principal | None = None
) -> Suite:
    """The suite; 404 when it does not exist or belongs to another team than `viewer`'s."""
    row = session.get(Suite, suite_id)
    if row is None or not can_see(viewer, row.team):
        raise NotFound(f"no suite {suite_id!r}", code="suite_not_found", param=param)
    return row


def list_suites(
    session: Session, *, viewer: Principal, after: str | None, limit: int
) -> tuple[Sequence[Suite], bool]:
    stmt = select(Suite).where(*team_filter(viewer, Suite.team))
    return paginate(session, stmt, Suite.id, after=after, limit=limit)


def delete_suite(session: Session, suite_id: str, *, viewer: Principal) -> str:
    """Delete a suite nobody uses: 409 `suite_in_use` while a job (whatever its status) names it in a
    stage's suites or its general_suites, or the registry holds scores on it. Its file stays."""
    row = get_suite(session, suite_id, viewer=viewer)
    users = [
        ("job", job.id, job.team)
        for job in files.jobs_referencing(session, row.id)
        if row.id in job.request.get("general_suites", [])
        or any(row.id in stage.get("suites", []) for stage in job.request.get("stages", []))
    ]
    if users:
        raise files.in_use_error(f"suite {suite_id}", "suite", users, viewer)
    if session.scalar(select(exists().where(Score.suite_id == row.id))):
        raise Conflict(
            f"suite {suite_id} has scores in the registry: what a version was measured on is kept",
            code="suite_in_use",
            param="id",
        )
    session.delete(row)
    session.flush()
    return suite_id


def load_suite(session: Session, store: Store, suite_id: str) -> EvalSuite:
    """The parsed suite for evaluation (workers), checked against the sha256 recorded at creation."""
    row = get_suite(session, suite_id)
    meta = SuiteMeta(
        name=row.name,
        grader=row.grader,
        tolerance=row.tolerance,
        min_score=row.min_score,
        grader_options=row.grader_options,
        decoding=DecodingConfig.model_validate(row.decoding),
    )
    try:
        parsed = parse_suite_jsonl(files.read_text(store, files.get_file(session, row.file_id)), meta)
    except SuiteError as error:  # stored before a check was added (a too-large regex, say)
        raise RuntimeError(
            f"suite {row.id} ({row.name}) does not pass today's suite checks; upload it again with "
            f"these fixed: {error}"
        ) from None
    if parsed.sha256 != row.suite_sha256:
        raise RuntimeError(f"suite {row.id} no longer matches its recorded sha256 (storage changed?)")
    return parsed
