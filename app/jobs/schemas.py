from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from app.errors import Unprocessable
from app.inputs import RequestModel
from app.outputs import ReadModel
from app.registry.aliases.service import ALIAS_NAME_PATTERN
from app.training.stage_config import Method

SKILL_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
# Job metadata: at most 16 keys of letters, digits, '_', '-', '.' or ':' (so a key is also a plain
# `?metadata[key]=` filter), values any text up to 512 characters.
METADATA_MAX_KEYS = 16
METADATA_KEY_CHARS = 64
METADATA_VALUE_CHARS = 512
METADATA_KEY_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,63}$"
_METADATA_KEY = re.compile(METADATA_KEY_PATTERN)


def check_metadata_key(key: object, *, param: str) -> str:
    if not isinstance(key, str) or not _METADATA_KEY.fullmatch(key):
        raise Unprocessable(
            f"metadata key {key!r} must be 1 to {METADATA_KEY_CHARS} letters, digits, '_', '-', '.' or ':' "
            "(not starting with '-', '.' or ':')",
            code="invalid_metadata",
            param=param,
        )
    return key


def check_metadata(value: Any) -> Any:
    """A string -> string map within the limits; every problem is a 422 naming the key."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise Unprocessable(
            "metadata must be an object of strings", code="invalid_metadata", param="metadata"
        )
    if len(value) > METADATA_MAX_KEYS:
        raise Unprocessable(
            f"metadata has {len(value)} keys; at most {METADATA_MAX_KEYS}",
            code="invalid_metadata",
            param="metadata",
        )
    for key, item in value.items():
        check_metadata_key(key, param="metadata")
        if not isinstance(item, str):
            raise Unprocessable(
                f"metadata[{key}] must be a string", code="invalid_metadata", param=f"metadata.{key}"
            )
        if len(item) > METADATA_VALUE_CHARS:
            raise Unprocessable(
                f"metadata[{key}] has {len(item)} characters; at most {METADATA_VALUE_CHARS}",
                code="invalid_metadata",
                param=f"metadata.{key}",
            )
    return value


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
    metadata: dict[str, str] = Field(
        default_factory=dict,
        max_length=METADATA_MAX_KEYS,
        description=f"your labels: at most {METADATA_MAX_KEYS} keys ({METADATA_KEY_PATTERN}), values up to "
        f"{METADATA_VALUE_CHARS} characters; filter with GET /v1/jobs?metadata[key]=value",
        examples=[{"ticket": "ML-1234"}],
    )

    @field_validator("metadata", mode="before")
    @classmethod
    def _metadata(cls, value: Any) -> Any:
        return check_metadata(value)


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
    metadata: dict[str, str] = Field(validation_alias="meta")
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
