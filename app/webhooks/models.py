"""Webhook endpoints (per team), the events recorded for them (an outbox written in the transaction
of the change it describes) and one delivery row per (event, endpoint) holding its retry state."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Float, ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.db import Base, JSONDoc


class WebhookEndpoint(Base):
    __tablename__ = "webhook_endpoint"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    # The creating token's team: the endpoint hears about that team's jobs (and every alias move).
    team: Mapped[str] = mapped_column(String(64), index=True)
    url: Mapped[str] = mapped_column(String(2048))
    description: Mapped[str | None] = mapped_column(String(500))
    events: Mapped[list[str]] = mapped_column(JSONDoc)
    # Standard Webhooks secret (`whsec_` + base64 key): kept to sign, shown once at creation.
    secret: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16))  # enabled | disabled
    disabled_reason: Mapped[str | None] = mapped_column(String(500))
    disabled_at: Mapped[int | None]
    # Failed attempts in a row across the endpoint's deliveries, and when the first of them failed (unix
    # seconds); a delivered one resets both. The worker disables an endpoint on both: a count alone
    # is reached by a burst of events during a short outage.
    consecutive_failures: Mapped[int] = mapped_column(default=0, server_default="0")
    failing_since: Mapped[float | None] = mapped_column(Float)
    created_by: Mapped[str] = mapped_column(ForeignKey("api_token.id"))
    created_at: Mapped[int]


class WebhookEvent(Base):
    """What happened, once per event (several endpoints share it); `payload` is the body sent."""

    __tablename__ = "webhook_event"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    type: Mapped[str] = mapped_column(String(32))
    # The team whose endpoints hear it; None: every team's (alias moves: the registry is shared).
    team: Mapped[str | None] = mapped_column(String(64))
    job_id: Mapped[str | None] = mapped_column(String(40))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONDoc)
    created_at: Mapped[int]


class WebhookDelivery(Base):
    """One event to one endpoint. The worker claims it (compare-and-set on `claimed_until`) before it
    POSTs, so two tasks for one delivery never both send, and a delivered one is never sent again."""

    __tablename__ = "webhook_delivery"
    __table_args__ = (
        UniqueConstraint("endpoint_id", "event_id"),
        Index("ix_webhook_delivery_due", "status", "next_attempt_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("webhook_endpoint.id"), index=True)
    event_id: Mapped[str] = mapped_column(ForeignKey("webhook_event.id"))
    status: Mapped[str] = mapped_column(String(16))  # pending | delivered | failed
    attempts: Mapped[int] = mapped_column(default=0, server_default="0")
    last_status_code: Mapped[int | None]
    last_error: Mapped[str | None] = mapped_column(String(500))
    # Unix seconds (fractional: test backoffs are short). Due when <= now; None once settled.
    next_attempt_at: Mapped[float | None] = mapped_column(Float)
    # An attempt is in flight until then (the POST's timeout and a margin).
    claimed_until: Mapped[float | None] = mapped_column(Float)
    # When a task was last sent for it: the sweep re-sends a due delivery's lost task at most this often.
    task_sent_at: Mapped[float | None] = mapped_column(Float)
    delivered_at: Mapped[int | None]
    created_at: Mapped[int]

    event: Mapped[WebhookEvent] = relationship(lazy="joined")

    @property
    def event_type(self) -> str:
        return self.event.type
