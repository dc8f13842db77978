from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from app.files.models import UploadedFile


class FileRead(BaseModel):
    id: str
    object: Literal["file"] = "file"
    purpose: str
    filename: str
    bytes: int
    sha256: str
    status: str
    created_at: int
    preflight: dict[str, Any]

    @classmethod
    def of(cls, row: UploadedFile) -> FileRead:
        return cls(
            id=row.id,
            purpose=row.purpose,
            filename=row.filename,
            bytes=row.bytes,
            sha256=row.sha256,
            status=row.status,
            created_at=row.created_at,
            preflight=row.preflight,
        )
