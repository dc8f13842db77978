"""Tokens (`/v1/tokens`, admin only): create one for a team with scopes, list them by prefix, revoke."""

from __future__ import annotations

from fastapi import APIRouter

from app.auth import service
from app.auth.dependencies import Admin
from app.auth.schemas import TokenCreate, TokenCreated, TokenRead
from app.db import SessionDep
from app.pagination import ListResponse, list_response

router = APIRouter(prefix="/tokens", tags=["tokens"])


@router.post("", status_code=201, response_model=TokenCreated, operation_id="create_token")
def create_token(body: TokenCreate, session: SessionDep, _admin: Admin) -> TokenCreated:
    """The secret is in this answer only; the service keeps its sha256."""
    token, secret = service.create_token(session, name=body.name, scopes=body.scopes, team=body.team)
    return TokenCreated(**TokenRead.of(token).model_dump(), token=secret)


@router.get("", response_model=ListResponse[TokenRead], operation_id="list_tokens")
def list_tokens(session: SessionDep, _admin: Admin) -> ListResponse[TokenRead]:
    return list_response(service.list_tokens(session), False, TokenRead.of)


@router.delete("/{token_id}", response_model=TokenRead, operation_id="revoke_token")
def revoke_token(token_id: str, session: SessionDep, _admin: Admin) -> TokenRead:
    """Revoked at once: the token's next request is a 401."""
    return TokenRead.of(service.revoke_token(session, token_id))
