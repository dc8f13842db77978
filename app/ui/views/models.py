"""Models: the lineage graph, and a version's gate report, training record, scores and forgetting
heatmap."""

from __future__ import annotations

from collections import defaultdict

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlalchemy.orm import Session

from app.auth.service import Principal
from app.db import SessionDep
from app.errors import NotFound
from app.registry import service as registry
from app.registry.aliases import service as aliases
from app.registry.forgetting.service import lineage_matrix
from app.registry.models import Score
from app.suites import service as suites
from app.ui.auth import PagePrincipal
from app.ui.heatmap import heatmap
from app.ui.lineage_graph import GraphNode, layout_lineage
from app.ui.pages import PageRoute, render

router = APIRouter(route_class=PageRoute)

# The graph shows the newest versions; an older parent outside them starts its branch at the left.
GRAPH_VERSIONS = 300


def alias_map(session: Session) -> dict[str, list[str]]:
    by_version: dict[str, list[str]] = defaultdict(list)
    for alias in aliases.list_aliases(session):
        by_version[alias.model_version_id].append(alias.name)
    return by_version


@router.get("/ui/models")
def models_page(request: Request, session: SessionDep, _principal: PagePrincipal) -> HTMLResponse:
    versions, has_more = registry.list_versions(
        session, status=None, base=None, after=None, limit=GRAPH_VERSIONS
    )
    pointers = alias_map(session)
    graph = layout_lineage(
        [
            GraphNode(
                id=v.id,
                label=registry.version_label(v),
                status=v.status,
                parent_id=v.parent_id,
                aliases=tuple(pointers.get(v.id, ())),
            )
            for v in versions
        ]
    )
    return render(
        request, "models.html", graph=graph, versions=versions, aliases=pointers, truncated=has_more
    )


def score_suite_names(session: Session, scores: list[Score], viewer: Principal) -> dict[str, str]:
    """Suite names this viewer may see (scores are shared, another team's suite stays unnamed)."""
    names = {}
    for suite_id in {score.suite_id for score in scores if score.suite_id is not None}:
        try:
            names[suite_id] = suites.get_suite(session, suite_id, viewer=viewer).name
        except NotFound:
            continue
    return names


@router.get("/ui/models/{version_id}")
def version_page(
    version_id: str, request: Request, session: SessionDep, principal: PagePrincipal
) -> HTMLResponse:
    version = registry.get_version(session, version_id)
    scores = list(registry.list_scores(session, version.id))
    chain = registry.lineage(session, version.id)
    matrix = lineage_matrix(session, version.id, viewer=principal)
    return render(
        request,
        "version.html",
        version=version,
        label=registry.version_label(version),
        parent=chain[1] if len(chain) > 1 else None,
        lineage=list(reversed(chain)),
        labels={v.id: registry.version_label(v) for v in chain},
        version_aliases=registry.aliases_of(session, version.id),
        all_aliases=[alias.name for alias in aliases.list_aliases(session)],
        scores=scores,
        suite_names=score_suite_names(session, scores, principal),
        unnamed_suite=suites.ANOTHER_TEAMS_SUITE,
        heat=heatmap(matrix),
    )
