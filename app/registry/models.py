from __future__ import annotations

from typing import Any

from sqlalchemy import ForeignKey, Index, String, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, JSONDoc


class ModelVersion(Base):
    __tablename__ = "model_version"
    __table_args__ = (UniqueConstraint("job_id", "skill"), UniqueConstraint("base_id", "number"))

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    # Only registered base models have a name; trained versions are named by lineage (base, number).
    name: Mapped[str | None] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(String(2000))
    parent_id: Mapped[str | None] = mapped_column(ForeignKey("model_version.id"), index=True)
    # The lineage root; a root points at itself.
    base_id: Mapped[str] = mapped_column(ForeignKey("model_version.id"))
    # 0 for the root, then 1, 2, ... in registration order within the lineage.
    number: Mapped[int]
    # use_alter: job and model_version refer to each other (job.base_version_id, model_version.job_id).
    job_id: Mapped[str | None] = mapped_column(ForeignKey("job.id", use_alter=True))
    skill: Mapped[str | None] = mapped_column(String(100))
    checkpoint_uri: Mapped[str] = mapped_column(String(1024))
    checkpoint_sha256: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(16))
    gate_report: Mapped[dict[str, Any] | None] = mapped_column(JSONDoc)
    # How a trained version was made: the method that ran (and, for `auto`, why), the resolved
    # configuration and the learning diagnostics' summary. None for registered base models.
    training: Mapped[dict[str, Any] | None] = mapped_column(JSONDoc)
    # Short labels anyone with models:promote may set (PATCH /v1/models/{id}); `?tag=` filters on them.
    tags: Mapped[list[str]] = mapped_column(JSONDoc, default=list, server_default=text("'[]'"))
    created_at: Mapped[int]


class Alias(Base):
    __tablename__ = "alias"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    model_version_id: Mapped[str] = mapped_column(ForeignKey("model_version.id"))
    created_at: Mapped[int]
    updated_at: Mapped[int]


class AliasHistory(Base):
    """Append-only: every alias move, never updated or deleted."""

    __tablename__ = "alias_history"

    seq: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True)
    alias_name: Mapped[str] = mapped_column(ForeignKey("alias.name"), index=True)
    action: Mapped[str] = mapped_column(String(16))  # promote | rollback
    from_version_id: Mapped[str | None] = mapped_column(ForeignKey("model_version.id"))
    to_version_id: Mapped[str] = mapped_column(ForeignKey("model_version.id"))
    actor: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str | None] = mapped_column(String(2000))
    forced: Mapped[bool]
    created_at: Mapped[int]


class Score(Base):
    """One suite score of one version under one decoding setup, with its per-item results."""

    __tablename__ = "score"
    __table_args__ = (
        UniqueConstraint("model_version_id", "suite_sha256", "decoding_hash"),
        Index("ix_score_checkpoint_lookup", "checkpoint_sha256", "suite_sha256", "decoding_hash"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    model_version_id: Mapped[str] = mapped_column(ForeignKey("model_version.id"))
    checkpoint_sha256: Mapped[str] = mapped_column(String(64))
    suite_id: Mapped[str | None] = mapped_column(ForeignKey("suite.id"))
    suite_sha256: Mapped[str] = mapped_column(String(64))
    decoding_hash: Mapped[str] = mapped_column(String(64))
    score: Mapped[float]
    ci_low: Mapped[float | None]
    ci_high: Mapped[float | None]
    n: Mapped[int]
    per_item: Mapped[list[Any]] = mapped_column(JSONDoc)
    created_at: Mapped[int]
