from __future__ import annotations

from typing import Any

from sqlalchemy import ForeignKey, String, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, JSONDoc


class Job(Base):
    __tablename__ = "job"
    __table_args__ = (UniqueConstraint("owner_token_id", "idempotency_key"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner_token_id: Mapped[str] = mapped_column(ForeignKey("api_token.id"))
    # The creating token's team: only it (and admins) can see, follow or cancel the job.
    team: Mapped[str] = mapped_column(String(64), index=True, default="default", server_default="default")
    status: Mapped[str] = mapped_column(String(16), index=True)
    base_version_id: Mapped[str] = mapped_column(ForeignKey("model_version.id"))
    # The validated request: stages with their StageConfig dumps, general suites, auto_promote.
    request: Mapped[dict[str, Any]] = mapped_column(JSONDoc)
    current_stage: Mapped[int] = mapped_column(default=0)
    step: Mapped[int | None]
    total_steps: Mapped[int | None]
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSONDoc)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONDoc)
    candidate_version_ids: Mapped[list[str]] = mapped_column(JSONDoc)
    # The caller's string -> string labels (`metadata` in the API; `metadata` is taken on the class).
    meta: Mapped[dict[str, str]] = mapped_column(
        "metadata", JSONDoc, default=dict, server_default=text("'{}'")
    )
    # Training-task deliveries so far: a task that keeps killing its worker is failed, not re-sent forever.
    deliveries: Mapped[int] = mapped_column(default=0)
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[int]
    updated_at: Mapped[int]
    status_changed_at: Mapped[int]
    started_at: Mapped[int | None]
    finished_at: Mapped[int | None]

    # The request's parts a reader sees as the job's own fields.
    @property
    def base_ref(self) -> str:
        return str(self.request["base"])

    @property
    def stages(self) -> list[dict[str, Any]]:
        return list(self.request["stages"])

    @property
    def general_suites(self) -> list[str]:
        return list(self.request.get("general_suites", []))

    @property
    def auto_promote(self) -> str | None:
        return self.request.get("auto_promote")


class JobEvent(Base):
    """Append-only log a user reads (messages, metrics, status changes); seq orders it."""

    __tablename__ = "job_event"

    seq: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("job.id"), index=True)
    created_at: Mapped[int]
    level: Mapped[str] = mapped_column(String(8))
    type: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(String(4000))
    data: Mapped[dict[str, Any] | None] = mapped_column(JSONDoc)


class JobTransition(Base):
    """One row per status change, with the seconds spent in the status left (feeds /metrics)."""

    __tablename__ = "job_transition"

    seq: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("job.id"), index=True)
    from_status: Mapped[str] = mapped_column(String(16))
    to_status: Mapped[str] = mapped_column(String(16))
    seconds_in_from: Mapped[int]
    created_at: Mapped[int]
