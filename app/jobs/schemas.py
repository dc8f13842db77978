from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from app.inputs import RequestModel
from app.outputs import ReadModel
from app.registry.aliases.service import ALIAS_NAME_PATTERN
from app.training.stage_config import Method

SKILL_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"


class StageCreate(RequestModel):
    skill: str = Field(pattern=SKILL_PATTERN, examples=["tool-use"])
    training_file: str = Field(max_length=100, description="id of a ready demonstrations file")
    suites: list[str] = Field(min_length=1, max_length=32, description="the new skill's suites (suite ids)")
    method: Method = Field(
        default="auto",
        description="auto (default): the teacher-readiness probe picks sdft when the teacher can teach "
        "this model, else sft_retain; or sdft, sft, sft_retain, sft_restore",
    )
    hyperparameters: dict[str, Any] = Field(
        default_factory=dict, description='StageConfig keys; any value may be "auto" or omitted'
    )


class JobCreate(RequestModel):
    base: str = Field(
        max_length=100, description="a model version id, or alias:NAME", examples=["alias:production"]
    )
    stages: list[StageCreate] = Field(min_length=1, max_length=16)
    general_suites: list[str] = Field(default_factory=list, max_length=32)
    auto_promote: str | None = Field(
        default=None, pattern=ALIAS_NAME_PATTERN, description="alias to move on success"
    )
    require_improvement: bool = Field(
        default=True,
        description="the gate requires the new skill's suites to improve on the parent "
        "(paired lower bound > 0)",
    )


class JobError(BaseModel):
    code: str
    message: str
    param: str | None = None


class JobRead(ReadModel):
    id: str
    object: Literal["job"] = "job"
    status: str
    base: str = Field(
        validation_alias="base_version_id",
        description="the base version id, resolved when the job was created",
    )
    base_ref: str = Field(description="the base as given (an id or alias:NAME)")
    stages: list[dict[str, Any]]
    general_suites: list[str]
    auto_promote: str | None
    current_stage: int
    step: int | None
    total_steps: int | None
    metrics: dict[str, Any] | None
    error: JobError | None
    candidate_version_ids: list[str]
    created_at: int
    updated_at: int
    started_at: int | None
    finished_at: int | None


class EventRead(ReadModel):
    id: str
    object: Literal["job.event"] = "job.event"
    created_at: int
    level: str
    type: str
    message: str
    data: dict[str, Any] | None
