from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from app.auth.service import Principal
from app.inputs import RequestModel
from app.registry.models import ModelVersion, Score


class ModelRegister(RequestModel):
    path: str = Field(min_length=1, max_length=1024, description="absolute directory or file:// uri")
    name: str = Field(min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=2000)


class ModelVersionRead(BaseModel):
    id: str
    object: Literal["model_version"] = "model_version"
    name: str | None
    description: str | None
    parent_id: str | None
    base_id: str
    number: int
    job_id: str | None
    skill: str | None
    checkpoint_uri: str | None = Field(description="where the weights are stored; shown to admins only")
    checkpoint_sha256: str
    status: str
    gate_report: dict[str, Any] | None
    training: dict[str, Any] | None = Field(
        description="how a trained version was made: method (and why, for auto), configuration, diagnostics"
    )
    created_at: int

    @classmethod
    def of(cls, v: ModelVersion, viewer: Principal | None = None) -> ModelVersionRead:
        return cls(
            id=v.id,
            name=v.name,
            description=v.description,
            parent_id=v.parent_id,
            base_id=v.base_id,
            number=v.number,
            job_id=v.job_id,
            skill=v.skill,
            checkpoint_uri=v.checkpoint_uri if viewer is None or viewer.is_admin else None,
            checkpoint_sha256=v.checkpoint_sha256,
            status=v.status,
            gate_report=v.gate_report,
            training=v.training,
            created_at=v.created_at,
        )


class ModelVersionDetail(ModelVersionRead):
    aliases: list[str]


class ScoreRead(BaseModel):
    id: str
    object: Literal["score"] = "score"
    model_version_id: str
    suite_id: str | None
    suite_sha256: str
    decoding_hash: str
    score: float
    ci_low: float | None
    ci_high: float | None
    n: int
    per_item: list[Any] | None = Field(description="per-item results, with ?per_item=true")
    created_at: int

    @classmethod
    def of(cls, s: Score, *, per_item: bool) -> ScoreRead:
        return cls(
            id=s.id,
            model_version_id=s.model_version_id,
            suite_id=s.suite_id,
            suite_sha256=s.suite_sha256,
            decoding_hash=s.decoding_hash,
            score=s.score,
            ci_low=s.ci_low,
            ci_high=s.ci_high,
            n=s.n,
            per_item=s.per_item if per_item else None,
            created_at=s.created_at,
        )
