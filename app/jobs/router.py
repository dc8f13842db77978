from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from app.auth.dependencies import CurrentPrincipal, JobsWriter
from app.db import SessionDep
from app.deps import SettingsDep
from app.inputs import check_text
from app.jobs import service
from app.jobs.models import JobEvent
from app.jobs.schemas import EventRead, JobCreate, JobRead
from app.jobs.states import JobStatus, is_terminal
from app.pagination import DEFAULT_LIMIT, AfterQuery, LimitQuery, ListResponse, list_response

router = APIRouter(prefix="/jobs", tags=["jobs"])

IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=255)]
SSE_BATCH = 500


@router.post("", status_code=201, response_model=JobRead)
def create_job(
    body: JobCreate,
    session: SessionDep,
    principal: JobsWriter,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> JobRead:
    """Validate and queue a job. Same Idempotency-Key and body: the same job, `Idempotency-Replayed: true`."""
    check_text(idempotency_key, param="Idempotency-Key")
    job, replayed = service.create_job(
        session, principal=principal, body=body, idempotency_key=idempotency_key
    )
    if replayed:
        response.headers["Idempotency-Replayed"] = "true"
    return JobRead.of(job)


@router.get("", response_model=ListResponse[JobRead])
def list_jobs(
    session: SessionDep,
    principal: CurrentPrincipal,
    status: JobStatus | None = None,
    base: Annotated[str | None, Query(max_length=100, description="base version id")] = None,
    after: AfterQuery = None,
    limit: LimitQuery = DEFAULT_LIMIT,
) -> ListResponse[JobRead]:
    rows, has_more = service.list_jobs(
        session, viewer=principal, status=status, base=base, after=after, limit=limit
    )
    return list_response(rows, has_more, JobRead.of)


@router.get("/{job_id}", response_model=JobRead)
def get_job(job_id: str, session: SessionDep, principal: CurrentPrincipal) -> JobRead:
    return JobRead.of(service.get_job(session, job_id, viewer=principal))


@router.post("/{job_id}/cancel", response_model=JobRead)
def cancel_job(job_id: str, session: SessionDep, principal: JobsWriter) -> JobRead:
    return JobRead.of(service.cancel_job(session, job_id=job_id, actor=principal.actor, viewer=principal))


@router.get(
    "/{job_id}/events",
    response_model=ListResponse[EventRead],
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "a page, or a stream with ?stream=true"}
    },
)
def list_events(
    job_id: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    principal: CurrentPrincipal,
    after: AfterQuery = None,
    limit: LimitQuery = DEFAULT_LIMIT,
    stream: bool = False,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=100)] = None,
) -> ListResponse[EventRead] | StreamingResponse:
    """Events newest first, paged; with `?stream=true`, server-sent events oldest first from
    `Last-Event-ID` (or the start), ending once the job is terminal and every event was sent."""
    check_text(last_event_id, param="Last-Event-ID")
    service.get_job(session, job_id, viewer=principal)
    if stream:
        start = (
            service.event_seq(session, job_id, last_event_id, param="Last-Event-ID") if last_event_id else 0
        )
        generator = _event_stream(
            request,
            job_id,
            start,
            settings.sse_poll_seconds,
            settings.sse_heartbeat_seconds,
            settings.sse_max_seconds,
        )
        return StreamingResponse(
            generator, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )
    rows, has_more = service.events_page(session, job_id, after=after, limit=limit)
    return list_response(rows, has_more, EventRead.of)


def _sse(event: JobEvent) -> str:
    data = EventRead.of(event).model_dump_json()
    return f"id: {event.id}\nevent: {event.type}\ndata: {data}\n\n"


async def _event_stream(
    request: Request, job_id: str, after_seq: int, poll: float, heartbeat: float, max_seconds: float
) -> AsyncIterator[str]:
    """Poll the database (a fresh short session each time) and forward new events.

    The status is read before the events, so once a terminal status is seen, one more empty read
    proves every event of the job was sent (workers write the final event with the final status)."""
    sessionmaker = request.app.state.read_sessionmaker  # polls only read

    def fetch(after: int) -> tuple[str, list[JobEvent]]:
        with sessionmaker() as session:
            status = service.status_of(session, job_id)
            assert status is not None  # checked before the stream started; jobs are never deleted
            return status, list(service.events_after(session, job_id, after, SSE_BATCH))

    started = last_write = time.monotonic()
    while True:
        status, events = await run_in_threadpool(fetch, after_seq)
        for event in events:
            yield _sse(event)
            after_seq = event.seq
        if events:
            last_write = time.monotonic()
            continue  # drain before deciding to stop
        if is_terminal(JobStatus(status)):
            yield f"event: end\ndata: {json.dumps({'job_id': job_id, 'status': status})}\n\n"
            return
        if time.monotonic() - started > max_seconds or await request.is_disconnected():
            return  # the client reconnects with Last-Event-ID
        if time.monotonic() - last_write >= heartbeat:
            yield ": keep-alive\n\n"
            last_write = time.monotonic()
        await asyncio.sleep(poll)
