"""Capacity: a bounded number of requests inside the app, 503 + Retry-After beyond it, reads that never
wait for SQLite's writer lock, and a client that retries what is safe to retry."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.engine import make_url

from app.capacity import RequestSlots, request_slots
from app.client import ApiClient, ClientError, retry_after_seconds
from app.settings import Settings

from .conftest import serve_in_thread

# --------------------------------------------------------------------------- the middleware alone


class GatedApp:
    """An ASGI app whose /slow requests wait for `gate`; counts how many run at once."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.running = 0
        self.most_running = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        counted = scope["path"] != "/healthz"
        self.running += counted
        self.most_running = max(self.most_running, self.running)
        try:
            if scope["path"] == "/stream":  # headers first, then a long body: like SSE
                await send({"type": "http.response.start", "status": 200, "headers": []})
                await self.gate.wait()
                await send({"type": "http.response.body", "body": b"done"})
                return
            if scope["path"] == "/slow":
                await self.gate.wait()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
        finally:
            self.running -= counted


async def _call(app: Any, path: str) -> tuple[int, dict[str, str], bytes]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get(path)
    return response.status_code, dict(response.headers), response.content


def test_slots_bound_concurrency_and_a_full_queue_answers_503_at_once() -> None:
    async def scenario() -> None:
        inner = GatedApp()
        app = RequestSlots(inner, slots=2, max_pending=3)
        waiting = [asyncio.create_task(_call(app, "/slow")) for _ in range(3)]
        await asyncio.sleep(0.05)
        assert inner.running == 2  # the third waits for a slot, outside the app
        assert app.pending == 3
        status, headers, body = await _call(app, "/slow")  # the fourth: queue full
        assert status == 503
        assert headers["retry-after"] == "1"
        assert b'"code":"busy"' in body and b'"type":"server_error"' in body
        status, _, _ = await _call(app, "/healthz")  # liveness is never refused
        assert status == 200
        inner.gate.set()
        results = await asyncio.gather(*waiting)
        assert [status for status, _, _ in results] == [200, 200, 200]
        assert inner.most_running == 2
        assert app.pending == 0

    asyncio.run(scenario())


def test_a_streaming_response_gives_back_its_slot_once_its_headers_are_sent() -> None:
    async def scenario() -> None:
        inner = GatedApp()
        app = RequestSlots(inner, slots=1, max_pending=1)
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "GET", "path": "/stream", "headers": [], "query_string": b""}
        streaming = asyncio.create_task(app(scope, receive, send))
        await asyncio.sleep(0.05)
        assert [m["type"] for m in sent] == ["http.response.start"]  # the body is still to come
        assert app.pending == 0
        status, _, _ = await _call(app, "/fast")  # the only slot is free again
        assert status == 200
        inner.gate.set()
        await streaming
        assert sent[-1]["body"] == b"done"

    asyncio.run(scenario())


def test_request_slots_match_the_database_pool() -> None:
    settings = Settings(db_pool_size=7, db_max_overflow=3)
    assert request_slots(settings) == 10


# --------------------------------------------------------------------------- the real app


def test_no_free_database_connection_is_a_503_with_retry_after_and_writes_nothing(
    tight_app: FastAPI, reader: dict[str, str], writer: dict[str, str], job_body: dict[str, Any], counts: Any
) -> None:
    with TestClient(tight_app) as client:
        assert client.get("/v1/models", headers=reader).status_code == 200
        before = counts()
        held = tight_app.state.engine.connect()  # the pool's only connection
        try:
            busy = client.get("/v1/models", headers=reader)
            refused = client.post("/v1/jobs", json=job_body, headers={**writer, "Idempotency-Key": "k-busy"})
        finally:
            held.close()
        assert busy.status_code == 503 and refused.status_code == 503
        assert busy.headers["Retry-After"] == "1"
        assert busy.json()["error"]["code"] == "busy"
        assert "retry after 1 s" in busy.json()["error"]["message"]
        assert counts() == before
        assert client.get("/v1/models", headers=reader).status_code == 200


def test_sqlite_reads_do_not_wait_for_the_writer_lock(
    backend: Settings, client: TestClient, reader: dict[str, str]
) -> None:
    if not backend.is_sqlite:
        pytest.skip("SQLite's single-writer lock")
    path = make_url(backend.database_url).database
    assert path is not None
    writer_connection = sqlite3.connect(path, isolation_level=None)
    try:
        writer_connection.execute("BEGIN IMMEDIATE")  # a long write transaction elsewhere
        started = time.monotonic()
        response = client.get("/v1/models", headers=reader)
        elapsed = time.monotonic() - started
    finally:
        writer_connection.execute("ROLLBACK")
        writer_connection.close()
    assert response.status_code == 200
    assert elapsed < 2.0  # a write transaction would wait out busy_timeout (10 s)


# --------------------------------------------------------------------------- the client


@pytest.fixture()
def tight_server(tight_app: FastAPI) -> Iterator[str]:
    with serve_in_thread(tight_app) as server:
        yield server.url


def test_the_client_retries_a_busy_read_and_not_a_write_without_a_key(
    tight_app: FastAPI, tight_server: str, reader: dict[str, str], writer: dict[str, str]
) -> None:
    api = ApiClient(tight_server, reader["Authorization"].removeprefix("Bearer "))
    held = tight_app.state.engine.connect()
    threading.Timer(0.5, held.close).start()  # busy for half a second, then free
    started = time.monotonic()
    models = api.request("GET", "/v1/models")
    assert "data" in models
    assert time.monotonic() - started >= 1.0  # waited Retry-After once

    api = ApiClient(tight_server, writer["Authorization"].removeprefix("Bearer "))
    held = tight_app.state.engine.connect()
    try:
        with pytest.raises(ClientError, match="503 busy"):
            api.request("POST", "/v1/suites", json={"name": "x"})  # no Idempotency-Key: not repeated
    finally:
        held.close()


def test_retry_after_is_read_only_from_a_503() -> None:
    request = httpx.Request("GET", "http://t/")
    assert retry_after_seconds(httpx.Response(503, headers={"Retry-After": "2"}, request=request)) == 2.0
    assert retry_after_seconds(httpx.Response(503, headers={"Retry-After": "3600"}, request=request)) == 30.0
    assert retry_after_seconds(httpx.Response(503, request=request)) is None
    assert retry_after_seconds(httpx.Response(429, headers={"Retry-After": "2"}, request=request)) is None
    assert retry_after_seconds(httpx.Response(503, headers={"Retry-After": "soon"}, request=request)) is None
