from __future__ import annotations

from sqlalchemy import Float, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base


class Lease(Base):
    """`key` is `job:<id>` (the worker running a job) or `lineage:<version id>` (the one job that may
    extend that version now). A lease whose `expires_at` has passed belongs to nobody."""

    __tablename__ = "lease"

    key: Mapped[str] = mapped_column(String(120), primary_key=True)
    owner: Mapped[str] = mapped_column(String(200))
    job_id: Mapped[str] = mapped_column(String(40))
    expires_at: Mapped[float] = mapped_column(Float)
    acquired_at: Mapped[float] = mapped_column(Float)
