"""A job's progress as the job list shows it, and the live stream that keeps the list current: one
connection per page however many jobs it shows (browsers allow six per host), polling the same rows."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass

from fastapi import Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import AsyncContentStream, Content

from app.auth.service import authenticate
from app.jobs import service as jobs
from app.jobs.models import Job
from app.jobs.states import JobStatus, is_terminal


@dataclass(frozen=True)
class JobProgress:
    id: str
    status: str
    stage: str  # "2/3 beta"
    step: int | None
    total: int | None
    terminal: bool
    created_at: int

    @classmethod
    def of(cls, job: Job) -> JobProgress:
        stages = job.request["stages"]
        index = min(job.current_stage, len(stages) - 1)
        return cls(
            id=job.id,
            status=job.status,
            stage=f"{index + 1}/{len(stages)} {stages[index]['skill']}",
            step=job.step,
            total=job.total_steps,
            terminal=is_terminal(JobStatus(job.status)),
            created_at=job.created_at,
        )


def _sse(event: str, data: object) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


# The last message of a stream whose token was revoked: the page reloads, to the sign-in page.
SIGNED_OUT = _sse("signed-out", {})


async def progress_events(
    request: Request,
    job_ids: Sequence[str],
    token: str,
    *,
    poll: float,
    heartbeat: float,
    max_seconds: float,
) -> AsyncIterator[str]:
    """`progress` for each job whenever it changed, `end` once all are terminal. The token is
    authenticated on every poll, so revoking it ends the stream with `signed-out`."""
    sessionmaker = request.app.state.read_sessionmaker

    def fetch() -> list[JobProgress] | None:
        with sessionmaker() as session:
            viewer = authenticate(session, token)
            if viewer is None:
                return None
            return [JobProgress.of(jobs.get_job(session, job_id, viewer=viewer)) for job_id in job_ids]

    sent: dict[str, JobProgress] = {}
    started = last_write = time.monotonic()
    while True:
        current = await run_in_threadpool(fetch)
        if current is None:
            yield SIGNED_OUT
            return
        for progress in current:
            if sent.get(progress.id) != progress:
                sent[progress.id] = progress
                last_write = time.monotonic()
                yield _sse("progress", asdict(progress))
        if all(progress.terminal for progress in current):
            yield _sse("end", {})
            return
        if time.monotonic() - started > max_seconds or await request.is_disconnected():
            return  # EventSource reconnects by itself
        if time.monotonic() - last_write >= heartbeat:
            yield ": keep-alive\n\n"
            last_write = time.monotonic()
        await asyncio.sleep(poll)


async def while_signed_in(request: Request, token: str, stream: AsyncContentStream) -> AsyncIterator[Content]:
    """`stream`, the API's job event stream, which ends once its token is revoked; then `signed-out`
    when that is why it ended, as progress_events does, so the page goes to the sign-in page."""
    async for message in stream:
        yield message

    def signed_in() -> bool:
        with request.app.state.read_sessionmaker() as session:
            return authenticate(session, token) is not None

    if not await run_in_threadpool(signed_in):
        yield SIGNED_OUT
