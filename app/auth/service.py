"""API tokens and who may see what. The secret is shown once; only its sha256 (and a short prefix to
tell tokens apart) is stored. Every token acts for one team: files, suites and jobs belong to the
creating token's team and are visible and actionable only to it; admins see everything; the model
registry and its aliases are shared, guarded by the models:promote scope."""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import ColumnElement, select, update
from sqlalchemy.orm import InstrumentedAttribute, Session

from app.auth.models import ApiToken
from app.db import new_id, now
from app.errors import NotFound, Unprocessable

TOKEN_PREFIX = "sdft_"
PREFIX_CHARS = 12  # "sdft_" and 7 characters of the secret: enough to tell tokens apart
DEFAULT_TEAM = "default"
TEAM_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"


class Scope(StrEnum):
    JOBS_WRITE = "jobs:write"  # upload files, create suites and jobs, cancel jobs
    MODELS_PROMOTE = "models:promote"  # move aliases (promote, rollback), auto_promote
    ADMIN = "admin"  # everything, every team's objects, tokens, base models


@dataclass(frozen=True)
class Principal:
    """Who is calling: every authenticated token may read its team's objects; writes need a scope."""

    token_id: str
    name: str
    scopes: frozenset[str]
    team: str = DEFAULT_TEAM

    def has(self, scope: Scope) -> bool:
        return scope in self.scopes or Scope.ADMIN in self.scopes

    @property
    def is_admin(self) -> bool:
        return Scope.ADMIN in self.scopes

    @property
    def actor(self) -> str:
        return f"{self.name} ({self.token_id}, team {self.team})"


def can_see(viewer: Principal | None, team: str) -> bool:
    """None is the system (workers, operators' commands): it sees everything, as admins do."""
    return viewer is None or viewer.is_admin or viewer.team == team


def team_filter(viewer: Principal | None, column: InstrumentedAttribute[str]) -> list[ColumnElement[bool]]:
    """WHERE clauses restricting a listing to what `viewer` may see."""
    return [] if viewer is None or viewer.is_admin else [column == viewer.team]


def hash_token(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def check_team(team: str, *, param: str = "team") -> None:
    if not re.fullmatch(TEAM_PATTERN, team):
        raise Unprocessable(
            f"team {team!r} must be lower-case letters, digits, '.', '_' or '-' (at most 64)",
            code="invalid_team",
            param=param,
        )


def create_token(
    session: Session, *, name: str, scopes: Sequence[Scope | str], team: str = DEFAULT_TEAM
) -> tuple[ApiToken, str]:
    """Insert a token and return it with its secret (the only time the secret exists in clear)."""
    check_team(team)
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(
        id=new_id("tok"),
        name=name,
        token_sha256=hash_token(secret),
        team=team,
        prefix=secret[:PREFIX_CHARS],
        scopes=sorted({str(Scope(s)) for s in scopes}),
        created_at=now(),
    )
    session.add(token)
    session.flush()
    return token, secret


def authenticate(session: Session, secret: str) -> Principal | None:
    token = session.scalar(
        select(ApiToken).where(ApiToken.token_sha256 == hash_token(secret), ApiToken.revoked_at.is_(None))
    )
    if token is None:
        return None
    return Principal(token_id=token.id, name=token.name, scopes=frozenset(token.scopes), team=token.team)


def ui_session_epoch(session: Session, token_id: str) -> int:
    """The token's current dashboard session epoch (see ApiToken.ui_session_epoch)."""
    return session.scalar(select(ApiToken.ui_session_epoch).where(ApiToken.id == token_id)) or 0


def end_ui_sessions(session: Session, token_id: str) -> None:
    """Sign out every dashboard session signed in with this token so far."""
    session.execute(
        update(ApiToken)
        .where(ApiToken.id == token_id)
        .values(ui_session_epoch=ApiToken.ui_session_epoch + 1)
        .execution_options(synchronize_session=False)
    )


def token_is_active(session: Session, token_id: str) -> bool:
    """Whether the token still exists unrevoked (a long request, such as a stream, checks it again)."""
    found = session.scalar(select(ApiToken.id).where(ApiToken.id == token_id, ApiToken.revoked_at.is_(None)))
    return found is not None


def list_tokens(session: Session) -> Sequence[ApiToken]:
    return session.scalars(select(ApiToken).order_by(ApiToken.id.desc())).all()


def revoke_token(session: Session, token_id: str) -> ApiToken:
    """Revoke a token (effective at its next request, and within a poll for its open event streams);
    revoking twice keeps the first time."""
    token = session.get(ApiToken, token_id)
    if token is None:
        raise NotFound(f"no token {token_id!r}", code="token_not_found", param="id")
    session.execute(
        update(ApiToken)
        .where(ApiToken.id == token_id, ApiToken.revoked_at.is_(None))
        .values(revoked_at=now())
        .execution_options(synchronize_session=False)
    )
    session.refresh(token)
    return token
