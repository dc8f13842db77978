"""Webhook endpoints per team, the outbox of events, and the delivery rows' state.

`record_event` is called inside the transaction of the change it describes (a job's status move, a
version's registration, an alias move): it adds one event and one delivery row per subscribed
endpoint, and asks for the delivery task after the commit. The worker (workers/webhooks.py) claims a
delivery with `claim`, POSTs outside any transaction, then records the outcome; the retry policy
(backoff, when to give up) is the worker's. Nothing here commits.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.orm import Session

from app.auth.service import Principal, can_see, team_filter
from app.db import new_id, now, one_at_a_time
from app.errors import Conflict, NotFound, Unprocessable
from app.pagination import paginate
from app.queue import TaskName, enqueue_after_commit
from app.webhooks.models import WebhookDelivery, WebhookEndpoint, WebhookEvent
from app.webhooks.receivers import is_public_host, parse_receiver
from app.webhooks.schemas import DeliveryStatus, EndpointStatus, EventType, WebhookCreate
from app.webhooks.signing import new_secret

MAX_ENDPOINTS_PER_TEAM = 20
# A task may run this much before its delivery's due time (clocks, broker ETA rounding).
EARLY_TOLERANCE_SECONDS = 0.5
ERROR_CHARS = 500


# --------------------------------------------------------------------------- endpoints


def check_url(url: str, *, allow_private: bool) -> str:
    """The URL, if the worker can send to it (`app.webhooks.receivers`); 422 naming `url` otherwise."""
    try:
        receiver = parse_receiver(url)
    except ValueError as exc:
        raise Unprocessable(
            f"{url!r} is not a usable webhook URL: {exc}", code="invalid_url", param="url"
        ) from None
    if not allow_private and not is_public_host(receiver.host):
        raise Unprocessable(
            f"{receiver.host} is a loopback, private or link-local address; webhooks go to public "
            "receivers (operators: SDFT_WEBHOOK_ALLOW_PRIVATE_URLS)",
            code="private_url",
            param="url",
        )
    return url


def create_endpoint(
    session: Session, *, principal: Principal, body: WebhookCreate, allow_private: bool
) -> WebhookEndpoint:
    """A new endpoint of the principal's team, with a fresh secret (in `.secret`, shown once)."""
    url = check_url(body.url, allow_private=allow_private)
    one_at_a_time(session, f"webhooks of team {principal.team}")  # two creates at 19 cannot both pass
    existing = session.scalar(
        select(func.count()).select_from(WebhookEndpoint).where(WebhookEndpoint.team == principal.team)
    )
    if (existing or 0) >= MAX_ENDPOINTS_PER_TEAM:
        raise Conflict(
            f"team {principal.team} already has {MAX_ENDPOINTS_PER_TEAM} webhooks; delete one first",
            code="too_many_webhooks",
        )
    endpoint = WebhookEndpoint(
        id=new_id("wh"),
        team=principal.team,
        url=url,
        description=body.description,
        events=[str(e) for e in body.events],
        secret=new_secret(),
        status=EndpointStatus.ENABLED,
        disabled_reason=None,
        disabled_at=None,
        consecutive_failures=0,
        created_by=principal.token_id,
        created_at=now(),
    )
    session.add(endpoint)
    session.flush()
    return endpoint


def get_endpoint(
    session: Session, endpoint_id: str, *, viewer: Principal | None = None, lock: bool = False
) -> WebhookEndpoint:
    """The endpoint (`lock`: FOR UPDATE); 404 when it does not exist or belongs to another team than
    `viewer`'s."""
    endpoint = session.get(WebhookEndpoint, endpoint_id, with_for_update=lock)
    if endpoint is None or not can_see(viewer, endpoint.team):
        raise NotFound(f"no webhook {endpoint_id!r}", code="webhook_not_found", param="id")
    return endpoint


def list_endpoints(
    session: Session, *, viewer: Principal, after: str | None, limit: int
) -> tuple[Sequence[WebhookEndpoint], bool]:
    stmt = select(WebhookEndpoint).where(*team_filter(viewer, WebhookEndpoint.team))
    return paginate(session, stmt, WebhookEndpoint.id, after=after, limit=limit)


def delete_endpoint(session: Session, endpoint_id: str, *, viewer: Principal) -> str:
    """Delete the endpoint and its delivery log; a task still queued for one of them does nothing."""
    # The row lock first: it waits for a transaction recording an event for the endpoint (it holds the
    # row FOR KEY SHARE, see `record_event`), whose deliveries the DELETE below then sees, and holds off
    # the next one. Without it, such a delivery committed meanwhile fails the endpoint's DELETE (or the
    # event's INSERT) on the foreign key. SQLite serializes writers anyway and ignores the lock.
    endpoint = get_endpoint(session, endpoint_id, viewer=viewer, lock=True)
    session.execute(delete(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint.id))
    session.delete(endpoint)
    session.flush()
    return endpoint_id


def deliveries_page(
    session: Session, endpoint_id: str, *, viewer: Principal, after: str | None, limit: int
) -> tuple[Sequence[WebhookDelivery], bool]:
    """The endpoint's deliveries, newest first; `after` is a delivery id."""
    get_endpoint(session, endpoint_id, viewer=viewer)
    stmt = select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id)
    return paginate(session, stmt, WebhookDelivery.id, after=after, limit=limit)


# --------------------------------------------------------------------------- the outbox


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


def record_event(
    session: Session,
    *,
    type: EventType,
    data: dict[str, Any],
    team: str | None,
    job_id: str | None = None,
) -> WebhookEvent | None:
    """Record an event for every enabled endpoint subscribed to `type` (of `team`; None: every team's)
    and send each delivery's task after the commit. None when nobody listens (nothing is written)."""
    # FOR KEY SHARE: an endpoint read here cannot be deleted before this transaction inserts its delivery
    # (see `delete_endpoint`); the worker's updates of the endpoint do not wait for it.
    stmt = (
        select(WebhookEndpoint)
        .where(WebhookEndpoint.status == EndpointStatus.ENABLED)
        .with_for_update(read=True, key_share=True)
    )
    if team is not None:
        stmt = stmt.where(WebhookEndpoint.team == team)
    endpoints = [e for e in session.scalars(stmt.order_by(WebhookEndpoint.id)) if str(type) in e.events]
    if not endpoints:
        return None
    created_at = now()
    event_id = new_id("msg")
    payload = {"id": event_id, "type": str(type), "timestamp": _iso(created_at), "data": data}
    event = WebhookEvent(
        id=event_id, type=str(type), team=team, job_id=job_id, payload=payload, created_at=created_at
    )
    session.add(event)
    session.flush()
    due = time.time()
    for endpoint in endpoints:
        delivery = WebhookDelivery(
            id=new_id("whd"),
            endpoint_id=endpoint.id,
            event_id=event_id,
            status=DeliveryStatus.PENDING,
            attempts=0,
            next_attempt_at=due,
            task_sent_at=due,
            created_at=created_at,
        )
        session.add(delivery)
        enqueue_after_commit(session, TaskName.DELIVER_WEBHOOK, delivery.id, required=False)
    session.flush()
    return event


# --------------------------------------------------------------------------- deliveries (workers)


@dataclass(frozen=True)
class Attempt:
    """What one POST needs, read when the delivery was claimed."""

    delivery_id: str
    endpoint_id: str
    url: str
    secret: str
    event_id: str
    job_id: str | None
    body: bytes
    number: int  # 1 for the first attempt
    event_created_at: int


def body_bytes(payload: dict[str, Any]) -> bytes:
    """The exact bytes sent (and signed): compact JSON with sorted keys, the same on every attempt."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def claim(session: Session, delivery_id: str, *, at: float, hold_seconds: float) -> Attempt | None:
    """Take a due, pending delivery nobody is sending (compare-and-set; counts the attempt), holding it
    `hold_seconds`. None when it was delivered or given up, is in flight elsewhere, is not due yet, or
    no longer exists: the caller sends nothing."""
    result = session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == delivery_id,
            WebhookDelivery.status == DeliveryStatus.PENDING,
            WebhookDelivery.next_attempt_at <= at + EARLY_TOLERANCE_SECONDS,
            or_(WebhookDelivery.claimed_until.is_(None), WebhookDelivery.claimed_until < at),
        )
        .values(claimed_until=at + hold_seconds, attempts=WebhookDelivery.attempts + 1)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return None
    delivery, endpoint, event = session.execute(
        select(WebhookDelivery, WebhookEndpoint, WebhookEvent)
        .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
        .join(WebhookEvent, WebhookEvent.id == WebhookDelivery.event_id)
        .where(WebhookDelivery.id == delivery_id)
        .execution_options(populate_existing=True)
    ).one()
    return Attempt(
        delivery_id=delivery.id,
        endpoint_id=endpoint.id,
        url=endpoint.url,
        secret=endpoint.secret,
        event_id=event.id,
        job_id=event.job_id,
        body=body_bytes(event.payload),
        number=delivery.attempts,
        event_created_at=event.created_at,
    )


# The endpoint's row is updated before the delivery's, in the order `delete_endpoint` and `record_event`
# lock them: transactions taking the two in opposite orders would deadlock on PostgreSQL.


def record_delivered(session: Session, attempt: Attempt, *, status_code: int, at: float) -> None:
    session.execute(
        update(WebhookEndpoint)
        .where(WebhookEndpoint.id == attempt.endpoint_id)
        .values(consecutive_failures=0, failing_since=None)
        .execution_options(synchronize_session=False)
    )
    session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == attempt.delivery_id, WebhookDelivery.status != DeliveryStatus.DELIVERED)
        .values(
            status=DeliveryStatus.DELIVERED,
            delivered_at=int(at),
            last_status_code=status_code,
            last_error=None,
            next_attempt_at=None,
            claimed_until=None,
        )
        .execution_options(synchronize_session=False)
    )


@dataclass(frozen=True)
class FailureStreak:
    """An endpoint's failed attempts since its last delivered one, and when the first of them failed."""

    failures: int
    since: float


def record_failure(
    session: Session,
    attempt: Attempt,
    *,
    status_code: int | None,
    error: str,
    next_attempt_at: float,
    at: float,
) -> FailureStreak:
    """Record a failed attempt and when to try again; returns the endpoint's streak of failures."""
    session.execute(
        update(WebhookEndpoint)
        .where(WebhookEndpoint.id == attempt.endpoint_id)
        .values(
            consecutive_failures=WebhookEndpoint.consecutive_failures + 1,
            failing_since=func.coalesce(WebhookEndpoint.failing_since, at),
        )
        .execution_options(synchronize_session=False)
    )
    session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == attempt.delivery_id, WebhookDelivery.status == DeliveryStatus.PENDING)
        .values(
            last_status_code=status_code,
            last_error=error[:ERROR_CHARS],
            next_attempt_at=next_attempt_at,
            claimed_until=None,
            task_sent_at=at,
        )
        .execution_options(synchronize_session=False)
    )
    streak = session.execute(
        select(WebhookEndpoint.consecutive_failures, WebhookEndpoint.failing_since).where(
            WebhookEndpoint.id == attempt.endpoint_id
        )
    ).one_or_none()
    if streak is None:  # the endpoint was deleted meanwhile
        return FailureStreak(failures=0, since=at)
    return FailureStreak(failures=streak.consecutive_failures, since=streak.failing_since)


def oldest_undelivered_at(session: Session, endpoint_id: str) -> int | None:
    """When the endpoint's oldest pending event happened (unix seconds)."""
    return session.scalar(
        select(func.min(WebhookEvent.created_at))
        .join(WebhookDelivery, WebhookDelivery.event_id == WebhookEvent.id)
        .where(WebhookDelivery.endpoint_id == endpoint_id, WebhookDelivery.status == DeliveryStatus.PENDING)
    )


def disable_endpoint(session: Session, endpoint_id: str, *, reason: str) -> list[str]:
    """Disable the endpoint and give up its pending deliveries. Returns the jobs those deliveries were
    about (to tell them), or [] when the endpoint was already disabled or is gone."""
    result = session.execute(
        update(WebhookEndpoint)
        .where(WebhookEndpoint.id == endpoint_id, WebhookEndpoint.status == EndpointStatus.ENABLED)
        .values(status=EndpointStatus.DISABLED, disabled_reason=reason[:ERROR_CHARS], disabled_at=now())
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return []
    job_ids = session.scalars(
        select(WebhookEvent.job_id)
        .join(WebhookDelivery, WebhookDelivery.event_id == WebhookEvent.id)
        .where(
            WebhookDelivery.endpoint_id == endpoint_id,
            WebhookDelivery.status == DeliveryStatus.PENDING,
            WebhookEvent.job_id.is_not(None),
        )
        .distinct()
    ).all()
    session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.endpoint_id == endpoint_id, WebhookDelivery.status == DeliveryStatus.PENDING)
        .values(status=DeliveryStatus.FAILED, next_attempt_at=None, claimed_until=None)
        .execution_options(synchronize_session=False)
    )
    return sorted(job_id for job_id in job_ids if job_id is not None)


def lost_deliveries(session: Session, *, at: float, grace_seconds: float, limit: int = 100) -> list[str]:
    """Pending deliveries due for more than `grace_seconds`, not in flight, whose last task was sent
    more than `grace_seconds` ago: their task was lost (a broker restart, a worker killed)."""
    cutoff = at - grace_seconds
    return list(
        session.scalars(
            select(WebhookDelivery.id)
            .where(
                WebhookDelivery.status == DeliveryStatus.PENDING,
                WebhookDelivery.next_attempt_at <= cutoff,
                or_(WebhookDelivery.claimed_until.is_(None), WebhookDelivery.claimed_until < at),
                or_(WebhookDelivery.task_sent_at.is_(None), WebhookDelivery.task_sent_at <= cutoff),
            )
            .order_by(WebhookDelivery.next_attempt_at)
            .limit(limit)
        )
    )


def mark_resent(session: Session, delivery_id: str, *, at: float, grace_seconds: float) -> bool:
    """Compare-and-set the delivery's `task_sent_at`: True for the one sweeper that should re-send."""
    cutoff = at - grace_seconds
    result = session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == delivery_id,
            WebhookDelivery.status == DeliveryStatus.PENDING,
            or_(WebhookDelivery.task_sent_at.is_(None), WebhookDelivery.task_sent_at <= cutoff),
        )
        .values(task_sent_at=at)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]
