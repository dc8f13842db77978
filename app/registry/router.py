"""Model versions (`/v1/models`) and the forgetting matrix (`/v1/forgetting`)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response
from fastapi.responses import JSONResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.auth.dependencies import Admin, CurrentPrincipal
from app.db import SessionDep
from app.errors import Unprocessable
from app.evaluation.forgetting import plot_forgetting
from app.pagination import AfterQuery, LimitQuery, ListResponse, list_response, paginate
from app.registry import aliases, service
from app.registry.models import ModelVersion
from app.registry.schemas import ModelRegister, ModelVersionDetail, ModelVersionRead, ScoreRead
from app.registry.service import VersionStatus
from app.storage import file_uri_to_path

router = APIRouter(tags=["models"])


def _detail(session: Session, version: ModelVersion) -> ModelVersionDetail:
    return ModelVersionDetail(
        **ModelVersionRead.of(version).model_dump(), aliases=service.aliases_of(session, version.id)
    )


def _model_path(raw: str) -> Path:
    if raw.startswith("file://"):
        return file_uri_to_path(raw)
    if "://" in raw:
        raise Unprocessable(
            "only local directories and file:// uris can be registered", code="unsupported_uri", param="path"
        )
    return Path(raw)


@router.post("/models", status_code=201, response_model=ModelVersionDetail)
def register_model(
    body: ModelRegister, session: SessionDep, _admin: Admin, response: Response
) -> ModelVersionDetail:
    """Register a base model directory (validated: config, tokenizer with chat template, safetensors);
    the same unchanged directory again returns its existing version with 200."""
    version, created = service.register_base(
        session, path=_model_path(body.path), name=body.name, description=body.description
    )
    if not created:
        response.status_code = 200
    return _detail(session, version)


@router.get("/models", response_model=ListResponse[ModelVersionRead])
def list_models(
    session: SessionDep,
    _principal: CurrentPrincipal,
    status: VersionStatus | None = None,
    base: Annotated[str | None, Query(max_length=100, description="lineage root id")] = None,
    after: AfterQuery = None,
    limit: LimitQuery = 20,
) -> ListResponse[ModelVersionRead]:
    stmt = select(ModelVersion)
    if status is not None:
        stmt = stmt.where(ModelVersion.status == str(status))
    if base is not None:
        stmt = stmt.where(ModelVersion.base_id == base)
    rows, has_more = paginate(session, stmt, ModelVersion.id, after=after, limit=limit)
    return list_response(rows, has_more, ModelVersionRead.of)


@router.get("/models/{version_id}", response_model=ModelVersionDetail)
def get_model(version_id: str, session: SessionDep, _principal: CurrentPrincipal) -> ModelVersionDetail:
    return _detail(session, service.get_version(session, version_id))


@router.get("/models/{version_id}/lineage", response_model=ListResponse[ModelVersionRead])
def get_lineage(
    version_id: str, session: SessionDep, _principal: CurrentPrincipal
) -> ListResponse[ModelVersionRead]:
    """The version, its parent, ... up to the registered base model (not paged)."""
    return list_response(service.lineage(session, version_id), False, ModelVersionRead.of)


@router.get("/models/{version_id}/scores", response_model=ListResponse[ScoreRead])
def get_scores(
    version_id: str, session: SessionDep, _principal: CurrentPrincipal, per_item: bool = False
) -> ListResponse[ScoreRead]:
    rows = service.list_scores(session, version_id)
    return list_response(rows, False, lambda s: ScoreRead.of(s, per_item=per_item))


@router.get(
    "/forgetting",
    responses={200: {"content": {"application/json": {}, "image/png": {}}}},
)
def get_forgetting(
    session: SessionDep,
    _principal: CurrentPrincipal,
    alias: Annotated[str | None, Query(max_length=64, description="alias whose lineage to show")] = None,
    version: Annotated[
        str | None, Query(max_length=100, description="or a version id (e.g. a rejected candidate)")
    ] = None,
    format: Literal["json", "png"] = "json",
) -> Response:
    """Versions (root to the alias's version, or to `version`) x suites, scores in points with intervals."""
    if (alias is None) == (version is None):
        raise Unprocessable("give exactly one of alias and version", code="alias_or_version", param="alias")
    if alias is not None:
        target_id = aliases.get_alias(session, alias).model_version_id
        title = f"forgetting along {alias!r}"
    else:
        assert version is not None
        target_id = service.get_version(session, version, param="version").id
        title = f"forgetting along the lineage of {target_id}"
    matrix = service.lineage_matrix(session, target_id)
    if format == "json":
        body = {"object": "forgetting_matrix", "alias": alias, "version": target_id}
        return JSONResponse({**body, **matrix.to_dict()})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "forgetting.png"
        plot_forgetting(matrix, path, title)
        return Response(path.read_bytes(), media_type="image/png")
