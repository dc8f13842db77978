"""Aliases: where each points, its history, and promote / roll back through a confirmation page that
shows the target's gate verdict and moves the alias only if it still points where the page said."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Query, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy.orm import Session

from app.db import SessionDep
from app.errors import Conflict, NotFound
from app.registry import service as registry
from app.registry.aliases import service as aliases
from app.registry.aliases.service import ALIAS_NAME_PATTERN
from app.registry.models import Alias, ModelVersion
from app.registry.service import VersionStatus
from app.ui.auth import PagePrincipal, PromoterForm
from app.ui.pages import PageRoute, render

router = APIRouter(route_class=PageRoute)

HISTORY_PAGE = 100
VERSION_CHOICES = 100
FormText = Annotated[str, Form(max_length=2000)]


def current_alias(session: Session, name: str) -> Alias | None:
    try:
        return aliases.get_alias(session, name)
    except NotFound:
        return None


def versions_by_id(session: Session, version_ids: set[str]) -> dict[str, ModelVersion]:
    return {version_id: registry.get_version(session, version_id) for version_id in version_ids}


@router.get("/ui/aliases")
def aliases_page(request: Request, session: SessionDep, _principal: PagePrincipal) -> HTMLResponse:
    rows = []
    for alias in aliases.list_aliases(session):
        last, _ = aliases.history_page(session, alias.name, after=None, limit=1)
        rows.append((alias, registry.get_version(session, alias.model_version_id), last[0] if last else None))
    return render(request, "aliases.html", rows=rows, label=registry.version_label)


@router.get("/ui/aliases/{name}")
def alias_page(name: str, request: Request, session: SessionDep, _principal: PagePrincipal) -> HTMLResponse:
    alias = aliases.get_alias(session, name)
    history, has_more = aliases.history_page(session, name, after=None, limit=HISTORY_PAGE)
    ids = {alias.model_version_id} | {h.to_version_id for h in history}
    ids |= {h.from_version_id for h in history if h.from_version_id is not None}
    versions, _ = registry.list_versions(session, status=None, base=None, after=None, limit=VERSION_CHOICES)
    return render(
        request,
        "alias.html",
        alias=alias,
        history=history,
        history_truncated=has_more,
        versions=versions_by_id(session, ids),
        choices=versions,
        label=registry.version_label,
        rollback_to=aliases.rollback_target(aliases.history(session, name)),
    )


def _confirm_page(
    request: Request,
    *,
    action: str,
    name: str,
    current: ModelVersion | None,
    target: ModelVersion | None,
    reason: str = "",
    status_code: int = 200,
) -> HTMLResponse:
    return render(
        request,
        "confirm_move.html",
        status_code=status_code,
        action=action,
        name=name,
        current=current,
        target=target,
        needs_force=target is not None and target.status != VersionStatus.ACCEPTED,
        reason=reason,
        label=registry.version_label,
    )


def _moved(request: Request, name: str, conflict: Conflict, retry_url: str, session: Session) -> HTMLResponse:
    alias = current_alias(session, name)
    now_at = registry.get_version(session, alias.model_version_id) if alias is not None else None
    return render(
        request,
        "moved.html",
        status_code=409,
        name=name,
        message=conflict.message,
        now_at=now_at,
        retry_url=retry_url,
        label=registry.version_label,
    )


@router.get("/ui/promote")
def promote_confirm(
    request: Request,
    session: SessionDep,
    _principal: PagePrincipal,
    alias: Annotated[str, Query(pattern=ALIAS_NAME_PATTERN)],
    version: Annotated[str, Query(max_length=100)],
) -> HTMLResponse:
    pointer = current_alias(session, alias)
    current = registry.get_version(session, pointer.model_version_id) if pointer is not None else None
    target = registry.get_version(session, version, param="version")
    return _confirm_page(request, action="promote", name=alias, current=current, target=target)


@router.post("/ui/promote")
def promote(
    request: Request,
    session: SessionDep,
    principal: PromoterForm,
    alias: Annotated[str, Form(pattern=ALIAS_NAME_PATTERN)],
    version: Annotated[str, Form(max_length=100)],
    expected_version: FormText = "",
    reason: FormText = "",
    force: Annotated[bool, Form()] = False,
) -> Response:
    """Compare-and-set against the version the confirmation page showed ("" = the alias did not exist)."""
    try:
        aliases.move(
            session,
            name=alias,
            version_id=version,
            actor=principal.actor,
            expected_version=expected_version or None,
            reason=reason.strip() or None,
            force=force,
        )
    except Conflict as conflict:
        if conflict.code != "alias_conflict":
            raise
        retry = "/ui/promote?" + urlencode({"alias": alias, "version": version})
        return _moved(request, alias, conflict, retry, session)
    # The compare-and-set held, so the alias was at expected_version: equal to `version`, nothing moved.
    notice = "unchanged" if expected_version == version else "promoted"
    return RedirectResponse(f"/ui/aliases/{alias}?notice={notice}", status_code=303)


@router.get("/ui/aliases/{name}/rollback")
def rollback_confirm(
    name: str, request: Request, session: SessionDep, _principal: PagePrincipal
) -> HTMLResponse:
    pointer = aliases.get_alias(session, name)
    target_id = aliases.rollback_target(aliases.history(session, name))
    return _confirm_page(
        request,
        action="rollback",
        name=name,
        current=registry.get_version(session, pointer.model_version_id),
        target=registry.get_version(session, target_id) if target_id is not None else None,
    )


@router.post("/ui/aliases/{name}/rollback")
def rollback(
    name: str,
    request: Request,
    session: SessionDep,
    principal: PromoterForm,
    expected_target: Annotated[str, Form(max_length=100)],
    expected_version: FormText = "",
    reason: FormText = "",
    force: Annotated[bool, Form()] = False,
) -> Response:
    """Compare-and-set against both versions the page showed: where the alias points and where it goes
    back to (the target is recomputed from the history, which may have changed in between)."""
    try:
        aliases.rollback(
            session,
            name=name,
            actor=principal.actor,
            expected_version=expected_version,
            expected_target=expected_target,
            reason=reason.strip() or None,
            force=force,
        )
    except Conflict as conflict:
        if conflict.code != "alias_conflict":
            raise
        return _moved(request, name, conflict, f"/ui/aliases/{name}/rollback", session)
    return RedirectResponse(f"/ui/aliases/{name}?notice=rolled-back", status_code=303)
