"""Base of every response schema: built from the ORM row's attributes (renamed ones through
`validation_alias`), so a schema lists its fields once instead of copying each one by hand."""

from __future__ import annotations

from typing import Any, Self

from pydantic import BaseModel, ConfigDict


class ReadModel(BaseModel):
    model_config = ConfigDict(from_attributes=True, populate_by_name=True)

    @classmethod
    def of(cls, row: Any) -> Self:
        return cls.model_validate(row)
