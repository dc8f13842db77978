from __future__ import annotations

from typing import Any

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, JSONDoc


class UploadedFile(Base):
    __tablename__ = "uploaded_file"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    purpose: Mapped[str] = mapped_column(String(32))
    filename: Mapped[str] = mapped_column(String(255))
    bytes: Mapped[int]
    sha256: Mapped[str] = mapped_column(String(64))
    storage_uri: Mapped[str] = mapped_column(String(1024))
    # Only "ready" exists today: a file that fails pre-flight is never stored (no "invalid" rows).
    status: Mapped[str] = mapped_column(String(16))
    preflight: Mapped[dict[str, Any]] = mapped_column(JSONDoc)
    created_by: Mapped[str] = mapped_column(ForeignKey("api_token.id"))
    # The creating token's team: only it (and admins) can see or use the file.
    team: Mapped[str] = mapped_column(String(64), index=True, default="default", server_default="default")
    created_at: Mapped[int]
