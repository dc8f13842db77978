"""FastAPI dependencies: `CurrentPrincipal` for any valid token, `require_scope(...)` for writes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.auth.service import Principal, Scope, authenticate
from app.db import ReadSessionDep
from app.errors import Forbidden, Unauthorized

# auto_error=False: a missing header is our 401 in our error shape, not FastAPI's 403.
bearer = HTTPBearer(auto_error=False, description="API token (`sdft tokens create`)")

CHALLENGE = {"WWW-Authenticate": "Bearer"}


def current_principal(
    session: ReadSessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    if credentials is None:
        raise Unauthorized("missing bearer token", code="missing_token", headers=CHALLENGE)
    principal = authenticate(session, credentials.credentials)
    # Give the connection back now: the handler takes its own, so a request holds one at a time
    # (RequestSlots sizes concurrency to the pool, one connection per request).
    session.close()
    if principal is None:
        raise Unauthorized("invalid or revoked token", code="invalid_token", headers=CHALLENGE)
    return principal


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


def require_scope(scope: Scope) -> Callable[[Principal], Principal]:
    def check(principal: CurrentPrincipal) -> Principal:
        if not principal.has(scope):
            raise Forbidden(f"this token lacks the {scope!s} scope", code="insufficient_scope")
        return principal

    return check


JobsWriter = Annotated[Principal, Depends(require_scope(Scope.JOBS_WRITE))]
Promoter = Annotated[Principal, Depends(require_scope(Scope.MODELS_PROMOTE))]
Admin = Annotated[Principal, Depends(require_scope(Scope.ADMIN))]
