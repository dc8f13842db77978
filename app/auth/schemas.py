from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from app.auth.models import ApiToken
from app.auth.service import TEAM_PATTERN, Scope
from app.inputs import RequestModel


class TokenCreate(RequestModel):
    name: str = Field(min_length=1, max_length=100)
    team: str = Field(default="default", pattern=TEAM_PATTERN)
    scopes: list[Scope] = Field(default_factory=list, max_length=3)


class TokenRead(BaseModel):
    id: str
    object: Literal["token"] = "token"
    name: str
    team: str
    prefix: str | None = Field(description="the secret's first characters, to tell tokens apart")
    scopes: list[str]
    created_at: int
    revoked_at: int | None

    @classmethod
    def of(cls, token: ApiToken) -> TokenRead:
        return cls(
            id=token.id,
            name=token.name,
            team=token.team,
            prefix=token.prefix,
            scopes=list(token.scopes),
            created_at=token.created_at,
            revoked_at=token.revoked_at,
        )


class TokenCreated(TokenRead):
    token: str = Field(description="the secret: shown in this answer only, store it now")
