"""Webhook deliveries: the body of the `sdft.webhooks.deliver` task and its retry policy.

One task is one attempt at one delivery (an event for one endpoint): claim it (a compare-and-set in
its own short transaction, so two tasks for one delivery never both send and a delivered one is
never sent again), POST the signed body outside any transaction, record the outcome. A failure is
retried by sending the task again with a Celery countdown (30 s doubling to 1 h by default), the
schedule kept in the delivery row; an endpoint that fails too often in a row, or whose oldest
undelivered event is older than the retry window, is disabled, its pending deliveries given up, and
the jobs they were about get an event saying so. A task lost on the way (broker restart, a worker
killed mid-POST) is re-sent by the reaper (`resend_lost_deliveries`).

Delivery is at least once: a worker that dies after the receiver answered but before the outcome
was recorded leaves the delivery to be sent again. Receivers deduplicate on `webhook-id`.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
from sqlalchemy.orm import Session, sessionmaker

from app.db import session_scope
from app.jobs import service as jobs
from app.jobs.service import EventLevel
from app.queue import TaskName, TaskProducer, enqueue_after_commit
from app.settings import Settings
from app.webhooks import service as webhooks
from app.webhooks.service import Attempt
from app.webhooks.signing import signed_headers

log = logging.getLogger(__name__)

# A claimed delivery is in flight for the POST's timeout and this much more; after that the reaper
# may send it again (its worker died).
HOLD_MARGIN_SECONDS = 30.0
USER_AGENT = "sdft-webhooks/1"


@dataclass(frozen=True)
class RetryPolicy:
    backoff_seconds: float = 30.0
    backoff_max_seconds: float = 3600.0
    retry_window_seconds: float = 24 * 3600.0
    max_consecutive_failures: int = 20
    timeout_seconds: float = 10.0
    allow_private: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(
            backoff_seconds=settings.webhook_backoff_seconds,
            backoff_max_seconds=settings.webhook_backoff_max_seconds,
            retry_window_seconds=settings.webhook_retry_window_seconds,
            max_consecutive_failures=settings.webhook_max_consecutive_failures,
            timeout_seconds=settings.webhook_timeout_seconds,
            allow_private=settings.webhook_allow_private_urls,
        )

    def delay(self, attempts: int) -> float:
        """Seconds before the next attempt after `attempts` failed ones: backoff, doubling, capped."""
        return float(min(self.backoff_seconds * 2 ** max(0, attempts - 1), self.backoff_max_seconds))

    def give_up_reason(
        self, failures_in_a_row: int, oldest_undelivered_at: int | None, at: float
    ) -> str | None:
        if failures_in_a_row >= self.max_consecutive_failures:
            return f"{failures_in_a_row} deliveries failed in a row"
        if oldest_undelivered_at is not None and at - oldest_undelivered_at >= self.retry_window_seconds:
            return f"an event stayed undelivered for more than {self.retry_window_seconds:g} s"
        return None


def private_address_problem(host: str, port: int) -> str | None:
    """Why a receiver may not be reached (a name resolving to a loopback, private or link-local
    address, or not resolving at all), or None."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        return f"cannot resolve {host}: {exc}"
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if not address.is_global:
            return f"{host} resolves to {address}, a loopback, private or link-local address"
    return None


def post(attempt: Attempt, policy: RetryPolicy) -> tuple[int | None, str | None]:
    """POST the signed body: (status code or None, error or None). Redirects are not followed."""
    parts = urlsplit(attempt.url)
    if not policy.allow_private:
        assert parts.hostname is not None  # checked when the endpoint was created
        port = parts.port or (443 if parts.scheme == "https" else 80)
        problem = private_address_problem(parts.hostname, port)
        if problem is not None:
            return None, problem
    headers = signed_headers(attempt.secret, attempt.event_id, int(time.time()), attempt.body)
    headers["user-agent"] = USER_AGENT
    try:
        with httpx.Client(timeout=policy.timeout_seconds, follow_redirects=False, trust_env=False) as client:
            response = client.post(attempt.url, content=attempt.body, headers=headers)
    except httpx.HTTPError as exc:
        return None, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if 200 <= response.status_code < 300:
        return response.status_code, None
    return response.status_code, f"HTTP {response.status_code}"


def _disable(session: Session, attempt: Attempt, reason: str) -> None:
    for job_id in webhooks.disable_endpoint(session, attempt.endpoint_id, reason=reason):
        jobs.append_event(
            session,
            job_id=job_id,
            level=EventLevel.WARN,
            type="webhook",
            message=f"webhook {attempt.endpoint_id} was disabled ({reason}); its undelivered events "
            "about this job will not be sent",
            data={"webhook_id": attempt.endpoint_id, "reason": reason},
        )


def deliver(sessions: sessionmaker[Session], delivery_id: str, policy: RetryPolicy) -> str:
    """One attempt at a delivery. Returns what happened: skipped (delivered already, given up, in
    flight elsewhere, not due, or gone), delivered, retrying, or disabled (the endpoint)."""
    at = time.time()
    with session_scope(sessions) as session:
        attempt = webhooks.claim(
            session, delivery_id, at=at, hold_seconds=policy.timeout_seconds + HOLD_MARGIN_SECONDS
        )
    if attempt is None:
        return "skipped"
    status_code, error = post(attempt, policy)
    done = time.time()
    with session_scope(sessions) as session:
        if error is None and status_code is not None:
            webhooks.record_delivered(session, attempt, status_code=status_code, at=done)
            return "delivered"
        delay = policy.delay(attempt.number)
        failures = webhooks.record_failure(
            session,
            attempt,
            status_code=status_code,
            error=error or "failed",
            next_attempt_at=done + delay,
            at=done,
        )
        oldest = webhooks.oldest_undelivered_at(session, attempt.endpoint_id)
        reason = policy.give_up_reason(failures, oldest, done)
        if reason is not None:
            log.warning("disabling webhook %s: %s", attempt.endpoint_id, reason)
            _disable(session, attempt, reason)
            return "disabled"
        enqueue_after_commit(session, TaskName.DELIVER_WEBHOOK, delivery_id, countdown=delay, required=False)
        return "retrying"


def resend_lost_deliveries(session: Session, producer: TaskProducer, *, grace_seconds: float) -> list[str]:
    """Send again the deliveries whose task was lost: due for `grace_seconds`, not in flight, no task
    sent for them since. Each is re-sent by one reaper (compare-and-set on its `task_sent_at`); a
    duplicate task would do nothing anyway (see `deliver`)."""
    at = time.time()
    sent = []
    for delivery_id in webhooks.lost_deliveries(session, at=at, grace_seconds=grace_seconds):
        if webhooks.mark_resent(session, delivery_id, at=at, grace_seconds=grace_seconds):
            log.warning("re-sending webhook delivery %s: its task was lost", delivery_id)
            producer.send(TaskName.DELIVER_WEBHOOK, delivery_id)
            sent.append(delivery_id)
    return sent
