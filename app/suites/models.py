from __future__ import annotations

from typing import Any

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, JSONDoc


class Suite(Base):
    __tablename__ = "suite"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    # Unique: the gate and the forgetting matrix key suites by name within a lineage.
    name: Mapped[str] = mapped_column(String(100), unique=True)
    file_id: Mapped[str] = mapped_column(ForeignKey("uploaded_file.id"))
    grader: Mapped[str] = mapped_column(String(32))
    tolerance: Mapped[float]
    min_score: Mapped[float | None]
    grader_options: Mapped[dict[str, Any]] = mapped_column(JSONDoc)
    decoding: Mapped[dict[str, Any]] = mapped_column(JSONDoc)
    # Content hash of the parsed suite (items + grading settings): cached scores are keyed by it.
    suite_sha256: Mapped[str] = mapped_column(String(64))
    num_items: Mapped[int]
    created_by: Mapped[str] = mapped_column(ForeignKey("api_token.id"))
    # The creating token's team: only it (and admins) can see or use the suite.
    team: Mapped[str] = mapped_column(String(64), index=True, default="default", server_default="default")
    created_at: Mapped[int]
