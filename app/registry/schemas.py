from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from app.auth.service import Principal
from app.inputs import RequestModel
from app.outputs import ReadModel
from app.registry.models import ModelVersion, Score


class ModelRegister(RequestModel):
    path: str = Field(min_length=1, max_length=1024, description="absolute directory or file:// uri")
    name: str = Field(min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=2000)


TAG_PATTERN = r"^[a-z0-9][a-z0-9._:-]{0,31}$"
MAX_TAGS = 16
Tag = Annotated[str, Field(pattern=TAG_PATTERN, description="1-32 of a-z 0-9 . _ : -")]


class ModelUpdate(RequestModel):
    """Fields left out are unchanged; `description: null` clears it, `tags` replaces the list."""

    description: str | None = Field(default=None, max_length=2000)
    tags: list[Tag] | None = Field(default=None, max_length=MAX_TAGS, examples=[["reviewed", "q3"]])

    @field_validator("tags")
    @classmethod
    def _unique(cls, tags: list[str] | None) -> list[str] | None:
        return None if tags is None else list(dict.fromkeys(tags))


class ModelVersionRead(ReadModel):
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
    tags: list[str]
    created_at: int


def version_read(version: ModelVersion, viewer: Principal | None = None) -> ModelVersionRead:
    """Stored paths are for admins (and the system) only."""
    read = ModelVersionRead.of(version)
    return read if viewer is None or viewer.is_admin else read.model_copy(update={"checkpoint_uri": None})


class ModelVersionDetail(ModelVersionRead):
    aliases: list[str]


class ScoreRead(ReadModel):
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


def score_read(score: Score, *, per_item: bool) -> ScoreRead:
    read = ScoreRead.of(score)
    return read if per_item else read.model_copy(update={"per_item": None})
