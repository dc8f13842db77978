"""Tokens (admin only): list by prefix, team and state; create one (its secret shown once); revoke."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

from fastapi import APIRouter, Form, Query, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import ValidationError
from sqlalchemy.orm import Session

from app.auth import service as tokens
from app.auth.models import ApiToken
from app.auth.schemas import TokenCreate
from app.auth.service import Scope
from app.db import SessionDep
from app.errors import loc_to_param
from app.ui.auth import AdminForm, AdminPage
from app.ui.pages import PageRoute, render

router = APIRouter(route_class=PageRoute)

TokenState = Literal["active", "revoked", "all"]
FormText = Annotated[str, Form(max_length=200)]


def filter_tokens(rows: Sequence[ApiToken], prefix: str, team: str, state: TokenState) -> list[ApiToken]:
    return [
        token
        for token in rows
        if (not prefix or (token.prefix or "").startswith(prefix))
        and (not team or token.team == team)
        and (state == "all" or (token.revoked_at is None) == (state == "active"))
    ]


def _page(
    request: Request,
    session: Session,
    *,
    prefix: str = "",
    team: str = "",
    state: TokenState = "active",
    error: str | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    return render(
        request,
        "tokens.html",
        status_code=status_code,
        tokens=filter_tokens(tokens.list_tokens(session), prefix.strip(), team.strip(), state),
        filters={"prefix": prefix, "team": team, "state": state},
        scopes=[str(s) for s in Scope],
        error=error,
    )


@router.get("/ui/admin/tokens")
def tokens_page(
    request: Request,
    session: SessionDep,
    _admin: AdminPage,
    prefix: Annotated[str, Query(max_length=16)] = "",
    team: Annotated[str, Query(max_length=64)] = "",
    state: TokenState = "active",
) -> HTMLResponse:
    return _page(request, session, prefix=prefix, team=team, state=state)


@router.post("/ui/admin/tokens")
def create_token(
    request: Request,
    session: SessionDep,
    _admin: AdminForm,
    name: FormText = "",
    team: FormText = "default",
    scopes: Annotated[list[str] | None, Form()] = None,
) -> Response:
    try:
        body = TokenCreate.model_validate(
            {"name": name.strip(), "team": team.strip(), "scopes": scopes or []}
        )
    except ValidationError as exc:
        message = "; ".join(f"{loc_to_param(e['loc'])}: {e['msg']}" for e in exc.errors()[:5])
        return _page(request, session, error=message, status_code=422)
    token, secret = tokens.create_token(session, name=body.name, scopes=body.scopes, team=body.team)
    return render(request, "token_created.html", status_code=201, token=token, secret=secret)


@router.post("/ui/admin/tokens/{token_id}/revoke")
def revoke_token(token_id: str, session: SessionDep, _admin: AdminForm) -> RedirectResponse:
    tokens.revoke_token(session, token_id)
    return RedirectResponse("/ui/admin/tokens?notice=token-revoked", status_code=303)
