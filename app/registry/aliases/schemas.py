from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from app.inputs import RequestModel
from app.registry.models import Alias, AliasHistory


class AliasMove(RequestModel):
    """Omit expected_version to move unconditionally; null means "the alias must not exist yet"."""

    version: str = Field(max_length=100)
    expected_version: str | None = Field(default=None, max_length=100)
    force: bool = False
    reason: str | None = Field(default=None, max_length=2000)


class AliasRollback(RequestModel):
    expected_version: str | None = Field(default=None, max_length=100)
    reason: str | None = Field(default=None, max_length=2000)


class AliasRead(BaseModel):
    name: str
    object: Literal["alias"] = "alias"
    version: str
    created_at: int
    updated_at: int

    @classmethod
    def of(cls, alias: Alias) -> AliasRead:
        return cls(
            name=alias.name,
            version=alias.model_version_id,
            created_at=alias.created_at,
            updated_at=alias.updated_at,
        )


class AliasHistoryRead(BaseModel):
    id: str
    object: Literal["alias.change"] = "alias.change"
    alias: str
    action: str
    from_version: str | None
    to_version: str
    actor: str
    reason: str | None
    forced: bool
    created_at: int

    @classmethod
    def of(cls, h: AliasHistory) -> AliasHistoryRead:
        return cls(
            id=h.id,
            alias=h.alias_name,
            action=h.action,
            from_version=h.from_version_id,
            to_version=h.to_version_id,
            actor=h.actor,
            reason=h.reason,
            forced=h.forced,
            created_at=h.created_at,
        )
