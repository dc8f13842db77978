from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from app.inputs import RequestModel
from app.outputs import ReadModel


class SuiteCreate(RequestModel):
    """Gate settings are in points (0..100); see app.evaluation.suites.SuiteMeta for the rules."""

    name: str = Field(max_length=64, examples=["tool-use"])
    file: str = Field(max_length=100, description="id of an uploaded regression_suite file")
    grader: str = Field(default="exact_match", max_length=32)
    tolerance: float = Field(
        default=2.0, ge=0.0, le=100.0, description="largest drop in points before the gate rejects"
    )
    min_score: float | None = Field(
        default=None, ge=0.0, le=100.0, description="floor in points for the new skill's suite"
    )
    grader_options: dict[str, Any] = Field(default_factory=dict)
    decoding: dict[str, Any] | None = Field(default=None, description="{greedy, max_new_tokens, temperature}")


class SuiteRead(ReadModel):
    id: str
    object: Literal["suite"] = "suite"
    name: str
    file: str = Field(validation_alias="file_id")
    grader: str
    tolerance: float
    min_score: float | None
    grader_options: dict[str, Any]
    decoding: dict[str, Any]
    sha256: str = Field(validation_alias="suite_sha256")
    num_items: int
    created_at: int


class SuiteDeleted(ReadModel):
    id: str
    object: Literal["suite"] = "suite"
    deleted: Literal[True] = True
