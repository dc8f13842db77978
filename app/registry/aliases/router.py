"""Aliases: promote (compare-and-set), roll back, read the append-only history."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Path

from app.auth.dependencies import CurrentPrincipal, Promoter
from app.db import SessionDep
from app.pagination import DEFAULT_LIMIT, AfterQuery, LimitQuery, ListResponse, list_response
from app.registry.aliases import service as aliases
from app.registry.aliases.schemas import AliasHistoryRead, AliasMove, AliasRead, AliasRollback
from app.registry.aliases.service import ALIAS_NAME_PATTERN, UNSET

router = APIRouter(prefix="/aliases", tags=["aliases"])

AliasName = Annotated[str, Path(pattern=ALIAS_NAME_PATTERN, description="e.g. production")]


@router.get("", response_model=ListResponse[AliasRead])
def list_aliases(session: SessionDep, _principal: CurrentPrincipal) -> ListResponse[AliasRead]:
    rows = aliases.list_aliases(session)
    return ListResponse[AliasRead](
        data=[AliasRead.of(a) for a in rows],
        has_more=False,
        first_id=rows[0].name if rows else None,
        last_id=rows[-1].name if rows else None,
    )


@router.get("/{name}", response_model=AliasRead)
def get_alias(name: AliasName, session: SessionDep, _principal: CurrentPrincipal) -> AliasRead:
    return AliasRead.of(aliases.get_alias(session, name))


@router.put("/{name}", response_model=AliasRead, name="promote_alias")
def promote(name: AliasName, body: AliasMove, session: SessionDep, principal: Promoter) -> AliasRead:
    """Point the alias at a version. `expected_version` makes it a compare-and-set (409 when someone
    moved the alias first); a version that is not accepted needs `force: true` and a `reason`."""
    aliases.move(
        session,
        name=name,
        version_id=body.version,
        actor=principal.actor,
        expected_version=body.expected_version if "expected_version" in body.model_fields_set else UNSET,
        reason=body.reason,
        force=body.force,
    )
    return AliasRead.of(aliases.get_alias(session, name))


@router.post("/{name}/rollback", response_model=AliasRead, name="rollback_alias")
def rollback(
    name: AliasName,
    session: SessionDep,
    principal: Promoter,
    body: Annotated[AliasRollback | None, Body()] = None,
) -> AliasRead:
    """Move the alias back to the version it held before the current one."""
    body = body or AliasRollback()
    aliases.rollback(
        session,
        name=name,
        actor=principal.actor,
        expected_version=body.expected_version if "expected_version" in body.model_fields_set else UNSET,
        reason=body.reason,
        force=body.force,
    )
    return AliasRead.of(aliases.get_alias(session, name))


@router.get("/{name}/history", response_model=ListResponse[AliasHistoryRead], name="list_alias_history")
def history(
    name: AliasName,
    session: SessionDep,
    _principal: CurrentPrincipal,
    after: AfterQuery = None,
    limit: LimitQuery = DEFAULT_LIMIT,
) -> ListResponse[AliasHistoryRead]:
    """Every move, newest first: who, when, from, to, why."""
    rows, has_more = aliases.history_page(session, name, after=after, limit=limit)
    return list_response(rows, has_more, AliasHistoryRead.of)
