"""The `sdft` client when things go wrong: `jobs events --follow` outlives the server's stream limit,
survives dropped and silent connections and a busy API, exits by the job's final status and stops
cleanly on Ctrl-C; `jobs create` is retried safely when busy; answers that are not the API's are named.

The real app plays the API; `FakeApi` plays what it cannot (a connection that drops or goes silent,
a proxy's own answers)."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

import app.client as client_module
from app.jobs import service as jobs
from app.jobs.models import Job
from app.jobs.states import JobStatus
from app.main import create_app
from app.settings import Settings

from .conftest import CliRun, LiveServer, serve_in_thread, unique

REPO_ROOT = Path(__file__).resolve().parents[3]

# --------------------------------------------------------------------------- a scripted fake server

Reply = Callable[["_Handler"], None]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        fake = self.server.fake
        fake.requests.append(SimpleNamespace(method=self.command, path=self.path, headers=self.headers))
        reply = fake.replies[min(len(fake.requests), len(fake.replies)) - 1]
        reply(self)

    do_GET = do_POST = do_DELETE = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    fake: FakeApi


class FakeApi:
    """A local HTTP server answering the n-th request with the n-th reply (the last one repeats);
    `requests` records each request's method, path and headers."""

    def __init__(self, *replies: Reply) -> None:
        self.replies = replies
        self.requests: list[Any] = []
        self.stop = threading.Event()  # releases silent connections
        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.server.fake = self
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeApi:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


def answer(status: int, body: bytes | str, content_type: str = "application/json", **headers: str) -> Reply:
    raw = body.encode() if isinstance(body, str) else body

    def reply(handler: _Handler) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(raw)))
        for name, value in headers.items():
            handler.send_header(name.replace("_", "-"), value)
        handler.end_headers()
        handler.wfile.write(raw)

    return reply


def event(event_id: str | None, kind: str, data: dict[str, Any] | str) -> str:
    text = data if isinstance(data, str) else json.dumps(data)
    return (f"id: {event_id}\n" if event_id else "") + f"event: {kind}\ndata: {text}\n\n"


def end(status: str) -> str:
    return event(None, "end", {"job_id": "job_x", "status": status})


def sse(*events: str, then: str = "close") -> Reply:
    """A 200 event stream sending `events`, then: "close" (clean end), "drop" (the connection breaks
    mid-stream) or "silent" (stays open sending nothing, as a dead NAT path looks)."""

    def reply(handler: _Handler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        for text in events:
            chunk = text.encode()
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        handler.wfile.flush()
        if then == "silent":
            handler.server.fake.stop.wait(10)
        if then == "close":
            handler.wfile.write(b"0\r\n\r\n")
        else:
            handler.close_connection = True

    return reply


def hang_up(handler: _Handler) -> None:
    """Close the connection without answering."""
    handler.close_connection = True


@pytest.fixture()
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The client's sleeps between tries, recorded instead of waited."""
    recorded: list[float] = []
    monkeypatch.setattr(
        client_module, "time", SimpleNamespace(sleep=recorded.append, monotonic=time.monotonic)
    )
    return recorded


def follow(
    url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], job_id: str = "job_x"
) -> tuple[int, list[dict[str, Any]], str]:
    monkeypatch.setenv("SDFT_API_URL", url)
    monkeypatch.setenv("SDFT_TOKEN", "x")
    code = client_module.main(["jobs", "events", job_id, "--follow"])
    out, err = capsys.readouterr()
    return code, [json.loads(line) for line in out.splitlines()], err


# --------------------------------------------------------------------------- the real app


def new_job(client: TestClient, writer: dict[str, str], job_body: dict[str, Any]) -> str:
    response = client.post("/v1/jobs", json=job_body, headers=writer)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def walk(db: sessionmaker[Session], job_id: str, *path: JobStatus) -> None:
    """Move a job along `path` as the workers do."""
    for from_status, to_status in itertools.pairwise(path):
        with db.begin() as session:
            assert jobs.advance(session, job_id, from_status, to_status)


TO_EVALUATING = (JobStatus.VALIDATING, JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.EVALUATING)


@pytest.fixture()
def short_streams(backend: Settings) -> Iterator[str]:
    """The API closing each event stream after 0.2 s (sse_max_seconds: an hour by default)."""
    application = create_app(backend.model_copy(update={"sse_max_seconds": 0.2}))
    with serve_in_thread(application) as server:
        yield server.url
    application.state.engine.dispose()


# Long enough that the client's first try lands inside it even on a loaded machine.
BUSY_SECONDS = 1.5


def busy_for(app: FastAPI, seconds: float) -> None:
    """Hold the app's only database connection for `seconds`: it answers 503 + Retry-After: 1 meanwhile."""
    held = app.state.engine.connect()
    threading.Timer(seconds, held.close).start()


def test_the_watch_outlasts_the_servers_stream_limit(
    short_streams: str,
    client: TestClient,
    writer: dict[str, str],
    job_body: dict[str, Any],
    db: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    job_id = new_job(client, writer, job_body)
    # ~10 clean closes before the job ends: none of them is a failure.
    worker = threading.Timer(2.0, walk, (db, job_id, *TO_EVALUATING, JobStatus.SUCCEEDED))
    worker.start()
    monkeypatch.setenv("SDFT_API_URL", short_streams)
    monkeypatch.setenv("SDFT_TOKEN", writer["Authorization"].removeprefix("Bearer "))
    code = client_module.main(["jobs", "events", job_id, "--follow"])
    worker.join()
    out, err = capsys.readouterr()
    streamed = [json.loads(line) for line in out.splitlines()]
    assert code == 0, err
    assert [e.get("message") for e in streamed] == [
        "job created; validating",
        "validating -> queued",
        "queued -> running",
        "running -> evaluating",
        "evaluating -> succeeded",
        None,
    ]  # each event once: every reconnect resumed after the last one seen
    assert streamed[-1] == {"event": "end", "job_id": job_id, "status": "succeeded"}


@pytest.mark.parametrize(("final", "exit_code"), [("succeeded", 0), ("failed", 1), ("rejected", 1)])
def test_following_exits_0_only_for_a_succeeded_job(
    final: str,
    exit_code: int,
    cli: CliRun,
    client: TestClient,
    writer: dict[str, str],
    job_body: dict[str, Any],
    db: sessionmaker[Session],
) -> None:
    job_id = new_job(client, writer, job_body)
    walk(db, job_id, *TO_EVALUATING, JobStatus(final))
    code, out, _ = cli("jobs", "events", job_id, "--follow")
    assert json.loads(out.splitlines()[-1]) == {"event": "end", "job_id": job_id, "status": final}
    assert code == exit_code


def test_a_busy_api_is_waited_for_when_following(
    tight_app: FastAPI,
    client: TestClient,
    writer: dict[str, str],
    job_body: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    job_id = new_job(client, writer, job_body)
    client.post(f"/v1/jobs/{job_id}/cancel", headers=writer)
    with serve_in_thread(tight_app) as server:
        monkeypatch.setenv("SDFT_API_URL", server.url)
        monkeypatch.setenv("SDFT_TOKEN", writer["Authorization"].removeprefix("Bearer "))
        busy_for(tight_app, BUSY_SECONDS)
        started = time.monotonic()
        code = client_module.main(["jobs", "events", job_id, "--follow"])
    out, err = capsys.readouterr()
    assert time.monotonic() - started >= 1.0  # waited Retry-After once
    assert json.loads(out.splitlines()[-1]) == {"event": "end", "job_id": job_id, "status": "cancelled"}
    assert code == 1 and err == ""


def test_ctrl_c_while_following_is_exit_130_without_a_traceback(
    live_server: LiveServer, client: TestClient, writer: dict[str, str], job_body: dict[str, Any]
) -> None:
    job_id = new_job(client, writer, job_body)  # stays validating: the stream goes on
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "SDFT_API_URL": live_server.url,
        "SDFT_TOKEN": writer["Authorization"].removeprefix("Bearer "),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "app.client", "jobs", "events", job_id, "--follow"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    watchdog = threading.Timer(30, process.kill)
    watchdog.start()
    try:
        assert process.stdout is not None
        assert json.loads(process.stdout.readline())["message"] == "job created; validating"
        process.send_signal(signal.SIGINT)
        _out, err = process.communicate(timeout=20)
    finally:
        watchdog.cancel()
    assert process.returncode == 130
    assert err == "interrupted\n"


def test_jobs_create_without_a_key_is_retried_when_busy_and_created_once(
    tight_app: FastAPI,
    client: TestClient,
    job_body: dict[str, Any],
    writer: dict[str, str],
    db: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    run = unique("busy-run")
    body = tmp_path / "job.json"
    body.write_text(json.dumps({**job_body, "metadata": {"run": run}}))
    with serve_in_thread(tight_app) as server:
        monkeypatch.setenv("SDFT_API_URL", server.url)
        monkeypatch.setenv("SDFT_TOKEN", writer["Authorization"].removeprefix("Bearer "))
        busy_for(tight_app, BUSY_SECONDS)
        started = time.monotonic()
        code = client_module.main(["jobs", "create", str(body)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert time.monotonic() - started >= 1.0  # refused busy at least once, then retried
    created = client.get("/v1/jobs", params={"metadata[run]": run}, headers=writer).json()["data"]
    assert [job["id"] for job in created] == [json.loads(captured.out)["id"]]
    with db() as session:
        key = session.scalar(select(Job.idempotency_key).where(Job.id == created[0]["id"]))
    assert key is not None and uuid.UUID(key).version == 4  # generated, so retrying was safe


# --------------------------------------------------------------------------- what the real app cannot do


def test_a_connection_that_delivered_events_resets_the_failure_count(
    waits: list[float], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    drops = [sse(event(f"evt_{i}", "status", {"message": f"m{i}"}), then="drop") for i in range(1, 8)]
    with FakeApi(*drops, sse(end("succeeded"))) as fake:
        code, streamed, err = follow(fake.url, monkeypatch, capsys)
    assert code == 0, err
    assert [e.get("message") for e in streamed] == [f"m{i}" for i in range(1, 8)] + [None]
    assert waits == [1.0] * 7  # each drop was the first failure in a row
    assert [r.headers.get("Last-Event-ID") for r in fake.requests] == [None] + [
        f"evt_{i}" for i in range(1, 8)
    ]


def test_a_stream_that_closes_at_once_with_nothing_is_not_reopened_in_a_spin(
    waits: list[float], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A clean close is no failure (the server's stream limit), but one with nothing sent is reopened
    # at most twice a second, never in a tight loop.
    with FakeApi(sse(), sse(), sse(end("succeeded"))) as fake:
        code, _streamed, err = follow(fake.url, monkeypatch, capsys)
    assert code == 0, err
    assert len(fake.requests) == 3 and len(waits) == 2
    assert all(0 < wait <= client_module.MIN_RECONNECT_SECONDS for wait in waits), waits


def test_failures_in_a_row_back_off_then_give_up(
    waits: list[float], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeApi(hang_up) as fake:
        code, streamed, err = follow(fake.url, monkeypatch, capsys)
    assert code == 2 and streamed == []
    assert waits == [1.0, 2.0, 4.0, 8.0] and len(fake.requests) == 5
    assert "gave up after 5 failed connections in a row: lost the event stream of job_x" in err


@pytest.mark.timeout(30)
def test_a_silent_connection_is_given_up_and_resumed(
    waits: list[float], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(client_module, "FOLLOW_READ_TIMEOUT_SECONDS", 0.5)
    first = event("evt_1", "status", {"message": "running"})
    with FakeApi(sse(first, then="silent"), sse(end("succeeded"))) as fake:
        started = time.monotonic()
        code, streamed, err = follow(fake.url, monkeypatch, capsys)
        elapsed = time.monotonic() - started
    assert code == 0, err
    assert elapsed < 5  # the silent connection holds for 10 s
    assert [e["event"] for e in streamed] == ["status", "end"]
    assert fake.requests[1].headers["Last-Event-ID"] == "evt_1"


def test_answers_that_are_not_the_apis_are_exit_2_naming_the_url(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    login = answer(200, "<html><body>Please sign in</body></html>", "text/html")
    gateway = answer(502, '{"error": "upstream connect error"}')
    bad_event = sse(event("1", "status", "{not json"))
    with FakeApi(login, gateway, login, bad_event, login) as fake:
        monkeypatch.setenv("SDFT_API_URL", fake.url)
        monkeypatch.setenv("SDFT_TOKEN", "x")
        results = []
        for argv in (
            ["jobs", "list"],
            ["models", "list"],
            ["files", "content", "file_x"],
            ["jobs", "events", "job_x", "--follow"],
            ["jobs", "events", "job_y", "--follow"],
        ):
            code = client_module.main(argv)
            results.append((code, capsys.readouterr()))
    assert [code for code, _ in results] == [2] * 5
    errors = [captured.err for _, captured in results]
    assert all(e.startswith("error: ") and e.endswith("(is SDFT_API_URL right?)\n") for e in errors)
    assert f"GET {fake.url}/v1/jobs answered an HTML page (200, text/html): '<html>" in errors[0]
    assert "answered an error that is not the API's (502, application/json)" in errors[1]
    assert "upstream connect error" in errors[1]
    assert "/v1/files/file_x/content answered an HTML page" in errors[2]
    assert results[2][1].out == ""  # the page is not passed off as the file
    assert "the event stream sent data that is not a JSON object: '{not json'" in errors[3]
    assert "/v1/jobs/job_y/events?stream=true did not answer an event stream (200, text/html)" in errors[4]
