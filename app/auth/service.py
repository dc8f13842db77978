"""Create and check API tokens. The secret is shown once; only its sha256 is stored."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.auth.models import ApiToken
from app.db import new_id, now

TOKEN_PREFIX = "sdft_"


class Scope(StrEnum):
    JOBS_WRITE = "jobs:write"  # upload files, create suites and jobs, cancel jobs
    MODELS_PROMOTE = "models:promote"  # move aliases (promote, rollback)
    ADMIN = "admin"  # everything, including registering base models


@dataclass(frozen=True)
class Principal:
    """Who is calling: every authenticated token may read; writes need a scope."""

    token_id: str
    name: str
    scopes: frozenset[str]

    def has(self, scope: Scope) -> bool:
        return scope in self.scopes or Scope.ADMIN in self.scopes

    @property
    def actor(self) -> str:
        return f"{self.name} ({self.token_id})"


def hash_token(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_token(session: Session, *, name: str, scopes: list[Scope]) -> tuple[ApiToken, str]:
    """Insert a token and return it with its secret (the only time the secret exists in clear)."""
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(
        id=new_id("tok"),
        name=name,
        token_sha256=hash_token(secret),
        scopes=sorted({str(s) for s in scopes}),
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
    return Principal(token_id=token.id, name=token.name, scopes=frozenset(token.scopes))
