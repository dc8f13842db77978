from __future__ import annotations

import math
from enum import StrEnum
from typing import Literal

from pydantic import Field, field_validator

from app.inputs import RequestModel
from app.outputs import ReadModel


class EventType(StrEnum):
    JOB_STATUS_CHANGED = "job.status_changed"  # the team's jobs: {job_id, from, to, error?}
    VERSION_REGISTERED = "version.registered"  # versions the team's jobs trained
    ALIAS_MOVED = "alias.moved"  # any alias (the registry is shared): every team's subscribers


class EndpointStatus(StrEnum):
    ENABLED = "enabled"
    DISABLED = "disabled"


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"  # given up: its endpoint was disabled


class WebhookCreate(RequestModel):
    url: str = Field(
        min_length=1,
        max_length=2048,
        pattern=r"^https?://",
        description="http(s) URL receiving POSTs",
        examples=["https://hooks.example.com/sdft"],
    )
    events: list[EventType] = Field(min_length=1, max_length=len(EventType))
    description: str | None = Field(default=None, max_length=500)

    @field_validator("events")
    @classmethod
    def _unique(cls, events: list[EventType]) -> list[EventType]:
        return list(dict.fromkeys(events))


class WebhookRead(ReadModel):
    id: str
    object: Literal["webhook"] = "webhook"
    url: str
    events: list[str]
    description: str | None
    status: str = Field(description="enabled, or disabled after repeated failures (see disabled_reason)")
    disabled_reason: str | None
    disabled_at: int | None
    created_at: int


class WebhookCreated(WebhookRead):
    secret: str = Field(description="the signing secret (whsec_...); shown only in this response")


class WebhookDeleted(ReadModel):
    id: str
    object: Literal["webhook"] = "webhook"
    deleted: Literal[True] = True


class WebhookDeliveryRead(ReadModel):
    id: str
    object: Literal["webhook.delivery"] = "webhook.delivery"
    event_id: str = Field(description="the webhook-id header: the same on every attempt")
    event_type: str
    status: str = Field(description="pending, delivered, or failed (given up when the endpoint was disabled)")
    attempts: int
    last_status_code: int | None = Field(description="the receiver's last HTTP status, if it answered")
    last_error: str | None
    next_attempt_at: int | None = Field(description="when a pending delivery is tried next (unix seconds)")
    delivered_at: int | None
    created_at: int

    @field_validator("next_attempt_at", mode="before")
    @classmethod
    def _whole_seconds(cls, value: float | None) -> int | None:
        return None if value is None else math.ceil(value)
