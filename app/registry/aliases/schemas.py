from __future__ import annotations

from typing import Literal

from pydantic import Field

from app.inputs import RequestModel
from app.outputs import ReadModel


class AliasMove(RequestModel):
    """Omit expected_version to move unconditionally; null means "the alias must not exist yet"."""

    version: str = Field(max_length=100)
    expected_version: str | None = Field(default=None, max_length=100)
    force: bool = False
    reason: str | None = Field(default=None, max_length=2000)


class AliasRollback(RequestModel):
    expected_version: str | None = Field(default=None, max_length=100)
    force: bool = False  # the earlier version is not accepted (it was forced there, or rejected since)
    reason: str | None = Field(default=None, max_length=2000)


class AliasRead(ReadModel):
    name: str
    object: Literal["alias"] = "alias"
    version: str = Field(validation_alias="model_version_id")
    created_at: int
    updated_at: int


class AliasHistoryRead(ReadModel):
    id: str
    object: Literal["alias.change"] = "alias.change"
    alias: str = Field(validation_alias="alias_name")
    action: str
    from_version: str | None = Field(validation_alias="from_version_id")
    to_version: str = Field(validation_alias="to_version_id")
    actor: str
    reason: str | None
    forced: bool
    created_at: int
