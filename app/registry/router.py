"""Model versions (`/v1/models`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Query, Response
from sqlalchemy.orm import Session

from app.auth.dependencies import Admin, CurrentPrincipal, Promoter
from app.auth.service import Principal
from app.db import SessionDep
from app.errors import Unprocessable
from app.jobs.schemas import SKILL_PATTERN
from app.pagination import DEFAULT_LIMIT, AfterQuery, LimitQuery, ListResponse, list_response
from app.registry import service
from app.registry.aliases.service import ALIAS_NAME_PATTERN
from app.registry.models import ModelVersion
from app.registry.schemas import (
    TAG_PATTERN,
    ModelRegister,
    ModelUpdate,
    ModelVersionDetail,
    ModelVersionRead,
    ScoreRead,
    score_read,
    version_read,
)
from app.registry.service import UNCHANGED, VersionStatus
from app.storage import file_uri_to_path

router = APIRouter(tags=["models"])


def _detail(session: Session, version: ModelVersion, viewer: Principal) -> ModelVersionDetail:
    return ModelVersionDetail(
        **version_read(version, viewer).model_dump(), aliases=service.aliases_of(session, version.id)
    )


def _model_path(raw: str) -> Path:
    if raw.startswith("file://"):
        try:
            return file_uri_to_path(raw)
        except ValueError as exc:  # a host, or no absolute path
            raise Unprocessable(str(exc), code="unsupported_uri", param="path") from exc
    if "://" in raw:
        raise Unprocessable(
            "only local directories and file:// uris can be registered", code="unsupported_uri", param="path"
        )
    return Path(raw)


@router.post(
    "/models",
    status_code=201,
    response_model=ModelVersionDetail,
    responses={200: {"model": ModelVersionDetail, "description": "the directory was already registered"}},
)
def register_model(
    body: ModelRegister, session: SessionDep, admin: Admin, response: Response
) -> ModelVersionDetail:
    """Register a base model directory (validated: config, tokenizer with chat template, safetensors);
    the same unchanged directory again returns its existing version with 200."""
    version, created = service.register_base(
        session, path=_model_path(body.path), name=body.name, description=body.description
    )
    if not created:
        response.status_code = 200
    return _detail(session, version, admin)


@router.get("/models", response_model=ListResponse[ModelVersionRead])
def list_models(
    session: SessionDep,
    principal: CurrentPrincipal,
    status: VersionStatus | None = None,
    base: Annotated[str | None, Query(max_length=100, description="lineage root id")] = None,
    skill: Annotated[
        str | None, Query(pattern=SKILL_PATTERN, description="the skill a stage trained")
    ] = None,
    alias: Annotated[
        str | None, Query(pattern=ALIAS_NAME_PATTERN, description="the version this alias points at")
    ] = None,
    tag: Annotated[str | None, Query(pattern=TAG_PATTERN, description="versions with this tag")] = None,
    after: AfterQuery = None,
    limit: LimitQuery = DEFAULT_LIMIT,
) -> ListResponse[ModelVersionRead]:
    """Versions newest first; every filter given must hold."""
    rows, has_more = service.list_versions(
        session, status=status, base=base, skill=skill, alias=alias, tag=tag, after=after, limit=limit
    )
    return list_response(rows, has_more, lambda v: version_read(v, principal))


@router.get("/models/{version_id}", response_model=ModelVersionDetail)
def get_model(version_id: str, session: SessionDep, principal: CurrentPrincipal) -> ModelVersionDetail:
    return _detail(session, service.get_version(session, version_id), principal)


@router.patch("/models/{version_id}", response_model=ModelVersionDetail)
def update_model(
    version_id: str, body: ModelUpdate, session: SessionDep, principal: Promoter
) -> ModelVersionDetail:
    """Edit a version's description and tags (models:promote); fields left out stay as they are."""
    version = service.update_version(
        session,
        version_id,
        description=body.description if "description" in body.model_fields_set else UNCHANGED,
        tags=body.tags,
    )
    return _detail(session, version, principal)


@router.get("/models/{version_id}/lineage", response_model=ListResponse[ModelVersionRead])
def get_lineage(
    version_id: str, session: SessionDep, principal: CurrentPrincipal
) -> ListResponse[ModelVersionRead]:
    """The version, its parent, ... up to the registered base model (not paged)."""
    return list_response(service.lineage(session, version_id), False, lambda v: version_read(v, principal))


@router.get("/models/{version_id}/scores", response_model=ListResponse[ScoreRead])
def get_scores(
    version_id: str, session: SessionDep, principal: CurrentPrincipal, per_item: bool = False
) -> ListResponse[ScoreRead]:
    """Scores are shared like the registry; the per-item outputs (`?per_item=true`) only with the team
    that owns the suite (the items are its test data), and with admins."""
    rows = service.list_scores(session, version_id)
    readable = service.suites_readable_by(session, principal, rows) if per_item else set()
    return list_response(rows, False, lambda s: score_read(s, per_item=s.suite_id in readable))
