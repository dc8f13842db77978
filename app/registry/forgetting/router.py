"""The forgetting matrix (`/v1/forgetting`): a lineage's versions x suites, as JSON or a PNG."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response
from fastapi.responses import JSONResponse

from app.auth.dependencies import CurrentPrincipal
from app.db import SessionDep
from app.errors import Unprocessable
from app.registry import service
from app.registry.aliases import service as aliases
from app.registry.forgetting.matrix import plot_forgetting
from app.registry.forgetting.service import lineage_matrix

router = APIRouter(tags=["models"])


@router.get(
    "/forgetting",
    responses={
        200: {
            "description": "the matrix as JSON, or its plot with ?format=png",
            "content": {
                "application/json": {"schema": {"type": "object"}},
                "image/png": {"schema": {"type": "string", "format": "binary"}},
            },
        }
    },
)
def get_forgetting(
    session: SessionDep,
    principal: CurrentPrincipal,
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
    matrix = lineage_matrix(session, target_id, viewer=principal)
    if format == "json":
        body = {"object": "forgetting_matrix", "alias": alias, "version": target_id}
        return JSONResponse({**body, **matrix.to_dict()})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "forgetting.png"
        plot_forgetting(matrix, path, title)
        return Response(path.read_bytes(), media_type="image/png")
