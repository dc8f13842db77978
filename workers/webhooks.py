"""Webhook deliveries: the body of the `sdft.webhooks.deliver` task and its retry policy.

One task is one attempt at one delivery (an event for one endpoint): claim it (a compare-and-set in
its own short transaction, so two tasks for one delivery never both send and a delivered one is
never sent again), POST the signed body outside any transaction, record the outcome. A failure is
retried by sending the task again with a Celery countdown (30 s doubling to 1 h by default), the
schedule kept in the delivery row; an endpoint whose failures in a row are many and last long (see
`RetryPolicy.failing_seconds`), or whose oldest undelivered event is older than the retry window, is
disabled, its pending deliveries given up, and the jobs they were about get an event saying so. A
task lost on the way (broker restart, a worker killed mid-POST) is re-sent by the reaper
(`resend_lost_deliveries`).

Delivery is at least once: a worker that dies after the receiver answered but before the outcome
was recorded leaves the delivery to be sent again. Receivers deduplicate on `webhook-id`.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
import typing
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass
from ipaddress import ip_address

import httpcore
from sqlalchemy.orm import Session, sessionmaker

from app.db import session_scope
from app.jobs import service as jobs
from app.jobs.service import EventLevel
from app.queue import TaskName, TaskProducer, enqueue_after_commit
from app.settings import Settings
from app.webhooks import service as webhooks
from app.webhooks.receivers import Receiver, is_public, parse_receiver
from app.webhooks.service import Attempt, FailureStreak
from app.webhooks.signing import signed_headers

log = logging.getLogger(__name__)

# A claimed delivery is in flight for the POST's timeout and this much more; after that the reaper
# may send it again (its worker died).
HOLD_MARGIN_SECONDS = 30.0
USER_AGENT = "sdft-webhooks/1"
# The most of a receiver's answer read: its status is all that counts, the rest is read only so that
# a short answer ends the exchange cleanly.
MAX_ANSWER_BYTES = 16 * 1024


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

    @property
    def failing_seconds(self) -> float:
        """How long an endpoint's failures in a row must last to disable it: as long as one delivery
        takes to fail `max_consecutive_failures` times (about 13 h by default). A count alone is
        reached in a second by a burst of events during a short outage."""
        return sum(self.delay(n) for n in range(1, self.max_consecutive_failures))

    def give_up_reason(
        self, streak: FailureStreak, oldest_undelivered_at: int | None, at: float
    ) -> str | None:
        failures = self.max_consecutive_failures
        if streak.failures >= failures and at - streak.since >= self.failing_seconds:
            return f"{failures} deliveries failed in a row"
        if oldest_undelivered_at is not None and at - oldest_undelivered_at >= self.retry_window_seconds:
            return f"an event stayed undelivered for more than {self.retry_window_seconds:g} s"
        return None


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.at = time.monotonic() + seconds

    def left(self) -> float:
        """The time the next network operation may take; TimeoutError once the attempt used it all."""
        left = self.at - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no answer within {self.seconds:g} s")
        return left


# Lookups run here so that the attempt's deadline bounds them (getaddrinfo cannot be interrupted): a
# stuck one holds a thread until the resolver gives up, and waits beyond these few queue, then time out.
_LOOKUPS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="webhook-dns")


def resolve(receiver: Receiver, deadline: _Deadline, *, allow_private: bool) -> list[str]:
    """The receiver's addresses, from one lookup within the deadline; each is checked unless
    `allow_private`. The POST connects to these: a second lookup could answer another address (DNS
    rebinding). ValueError saying why the receiver may not be reached."""
    lookup = _LOOKUPS.submit(socket.getaddrinfo, receiver.host, receiver.port, type=socket.SOCK_STREAM)
    try:
        infos = lookup.result(timeout=deadline.left())
    except TimeoutError:
        raise TimeoutError(f"resolving {receiver.host} took longer than {deadline.seconds:g} s") from None
    except OSError as exc:
        raise ValueError(f"cannot resolve {receiver.host}: {exc}") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise ValueError(f"{receiver.host} resolves to no address")
    refused = [a for a in addresses if not is_public(ip_address(a.split("%", 1)[0]))]  # %: IPv6 zone
    if refused and not allow_private:
        raise ValueError(
            # The address itself is left out: the log is the tenant's, the network is not.
            f"{receiver.host} resolves to a loopback, private or link-local address"
        )
    return addresses


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every read and write ends by the attempt's deadline. httpcore's timeouts
    are per operation: a receiver sending a byte at a time would keep the attempt going past its
    claim, and the reaper would send the delivery again meanwhile."""

    def __init__(self, stream: httpcore.NetworkStream, deadline: _Deadline) -> None:
        self.stream = stream
        self.deadline = deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self.stream.read(max_bytes, self.deadline.left())

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.stream.write(buffer, self.deadline.left())

    def close(self) -> None:
        self.stream.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        # `server_hostname` is the URL's host: TLS sends it (SNI) and verifies the certificate for it.
        tls = self.stream.start_tls(ssl_context, server_hostname, self.deadline.left())
        return _DeadlineStream(tls, self.deadline)

    def get_extra_info(self, info: str) -> typing.Any:
        return self.stream.get_extra_info(info)


class _PinnedBackend(httpcore.NetworkBackend):
    """Connects to the checked `addresses` (in order, as the resolver sorted them), whatever host name
    it is asked for."""

    def __init__(self, addresses: list[str], deadline: _Deadline) -> None:
        self.addresses = addresses
        self.deadline = deadline

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        *others, last = self.addresses
        for tried, address in enumerate(others):
            # An even share of the time left per address still to try, so that one unreachable
            # address does not use it all: the next is tried when it is refused or times out.
            with suppress(httpcore.ConnectError, httpcore.ConnectTimeout):
                return self._connect(address, port, self.deadline.left() / (len(self.addresses) - tried))
        return self._connect(last, port, self.deadline.left())

    def _connect(self, address: str, port: int, timeout: float) -> httpcore.NetworkStream:
        stream = httpcore.SyncBackend().connect_tcp(address, port, timeout)
        return _DeadlineStream(stream, self.deadline)


def post(attempt: Attempt, policy: RetryPolicy) -> tuple[int | None, str | None]:
    """POST the signed body: (status code or None, error or None). Redirects are not followed. The
    attempt (resolving, connecting, sending, the answer) ends within `policy.timeout_seconds`, well
    within its claim; whatever goes wrong is an error to record and retry."""
    deadline = _Deadline(policy.timeout_seconds)
    try:
        receiver = parse_receiver(attempt.url)
        addresses = resolve(receiver, deadline, allow_private=policy.allow_private)
        status_code = _send(receiver, addresses, deadline, attempt)
    except ValueError as exc:
        return None, str(exc)
    except Exception as exc:  # anything a receiver does must end in a recorded attempt, never a crash
        return None, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if 200 <= status_code < 300:
        return status_code, None
    return status_code, f"HTTP {status_code}"


def _send(receiver: Receiver, addresses: list[str], deadline: _Deadline, attempt: Attempt) -> int:
    headers = signed_headers(attempt.secret, attempt.event_id, int(time.time()), attempt.body)
    headers |= {"host": receiver.host_header, "user-agent": USER_AGENT}
    url = httpcore.URL(
        scheme=receiver.scheme.encode(),
        host=receiver.host.encode(),
        port=receiver.port,
        target=receiver.target,
    )
    with (
        httpcore.ConnectionPool(network_backend=_PinnedBackend(addresses, deadline)) as pool,
        pool.stream("POST", url, headers=list(headers.items()), content=attempt.body) as response,
    ):
        # The status decides; the start of the body is read only to end the exchange cleanly, so a
        # body that never comes does not turn a 2xx into a failure (and a duplicate).
        with suppress(httpcore.ReadTimeout, httpcore.ReadError, httpcore.RemoteProtocolError, TimeoutError):
            read = 0
            for chunk in response.iter_stream():
                read += len(chunk)
                if read >= MAX_ANSWER_BYTES:
                    break
        return response.status


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
        streak = webhooks.record_failure(
            session,
            attempt,
            status_code=status_code,
            error=error or "failed",
            next_attempt_at=done + delay,
            at=done,
        )
        oldest = webhooks.oldest_undelivered_at(session, attempt.endpoint_id)
        reason = policy.give_up_reason(streak, oldest, done)
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
