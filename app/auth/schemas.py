from __future__ import annotations

from typing import Literal

from pydantic import Field

from app.auth.service import TEAM_PATTERN, Scope
from app.inputs import RequestModel
from app.outputs import ReadModel


class TokenCreate(RequestModel):
    name: str = Field(min_length=1, max_length=100)
    team: str = Field(default="default", pattern=TEAM_PATTERN)
    scopes: list[Scope] = Field(default_factory=list, max_length=3)


class TokenRead(ReadModel):
    id: str
    object: Literal["token"] = "token"
    name: str
    team: str
    prefix: str | None = Field(description="the secret's first characters, to tell tokens apart")
    scopes: list[str]
    created_at: int
    revoked_at: int | None


class TokenCreated(TokenRead):
    token: str = Field(description="the secret: shown in this answer only, store it now")
