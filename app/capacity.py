"""How much work one API process takes on at once, and what it says when it is full.

A request's database session spans several thread-pool calls (the session dependency, the auth
dependency, the endpoint), and it holds its connection between them. Bounding threads therefore does
not bound connections: under a burst, a hundred requests each held a connection while waiting for a
thread, the pool ran dry and requests failed after the pool timeout. So `RequestSlots` admits at most
`request_slots(settings)` requests (the pool's size plus overflow) into the application at once; the
others wait in the event loop, in arrival order, which costs nothing. Past `api_max_pending_requests`
waiting or running requests, a new one gets 503 + Retry-After immediately, before anything is read or
written: a bounded queue keeps latency bounded, and clients retry with the same Idempotency-Key.
"""

from __future__ import annotations

import asyncio
from typing import Any

from app.errors import busy_error, error_response
from app.settings import Settings

# Liveness never waits or is refused (a busy API is alive) and touches no database.
UNLIMITED_PATHS = frozenset({"/healthz"})
# Threads for sync code that runs outside a slot (SSE polls) on top of the slots' own.
SPARE_THREADS = 8


def request_slots(settings: Settings) -> int:
    """Requests inside the application at once: one per database connection the pool can open."""
    return settings.db_pool_size + settings.db_max_overflow


def request_threads(settings: Settings) -> int:
    """Threads for sync endpoints and dependencies: every slot's, plus spares."""
    return request_slots(settings) + SPARE_THREADS


class RequestSlots:
    """ASGI middleware: at most `slots` requests between entering the application and their
    response's first message, at most `max_pending` admitted and unanswered (running or waiting).

    A streaming response (server-sent events) frees its slot and stops counting once its headers are
    sent: the stream's polls take a connection only for a moment each."""

    def __init__(self, app: Any, *, slots: int, max_pending: int) -> None:
        self.app = app
        self.slots = slots
        self.max_pending = max_pending
        self.pending = 0
        self._semaphore: asyncio.Semaphore | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in UNLIMITED_PATHS:
            await self.app(scope, receive, send)
            return
        if self.pending >= self.max_pending:
            error = busy_error(f"the API has {self.pending} requests in progress")
            await error_response(error)(scope, receive, send)
            return
        if self._semaphore is None:  # created on first use, inside the server's event loop
            self._semaphore = asyncio.Semaphore(self.slots)
        semaphore = self._semaphore
        self.pending += 1
        holding, counted = False, True

        def release() -> None:
            nonlocal holding, counted
            if holding:
                holding = False
                semaphore.release()
            if counted:
                counted = False
                self.pending -= 1

        async def send_releasing(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                release()
            await send(message)

        try:
            await semaphore.acquire()
            holding = True
            await self.app(scope, receive, send_releasing)
        finally:
            release()
