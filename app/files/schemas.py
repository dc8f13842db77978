from __future__ import annotations

from typing import Any, Literal

from app.outputs import ReadModel


class FileRead(ReadModel):
    id: str
    object: Literal["file"] = "file"
    purpose: str
    filename: str
    bytes: int
    sha256: str
    status: str
    created_at: int
    preflight: dict[str, Any]


class FileDeleted(ReadModel):
    id: str
    object: Literal["file"] = "file"
    deleted: Literal[True] = True
