from __future__ import annotations

import asyncio
import csv
import io
import json
import time
from collections.abc import AsyncIterator, Iterator
from enum import StrEnum
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from app.auth.dependencies import CurrentPrincipal, JobsWriter
from app.auth.service import token_is_active
from app.db import SessionDep
from app.deps import SettingsDep
from app.errors import Unprocessable
from app.inputs import check_text
from app.jobs import service
from app.jobs.models import JobEvent
from app.jobs.schemas import METADATA_VALUE_CHARS, EventRead, JobCreate, JobRead, check_metadata_key
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


METADATA_FILTER_PARAMETER = {
    "name": "metadata",
    "in": "query",
    "required": False,
    "style": "deepObject",
    "explode": True,
    "description": "jobs whose metadata has key = value: `?metadata[ticket]=ML-1234` (repeat for more keys)",
    "schema": {"type": "object", "additionalProperties": {"type": "string"}},
}


def metadata_filter(request: Request) -> dict[str, str]:
    """`metadata[key]=value` query parameters as {key: value}, each key checked like on create."""
    wanted: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        if not (name.startswith("metadata[") and name.endswith("]")):
            continue
        param = name
        key = check_metadata_key(name[len("metadata[") : -1], param=param)
        if len(value) > METADATA_VALUE_CHARS:
            raise Unprocessable(
                f"{name} is longer than {METADATA_VALUE_CHARS} characters",
                code="invalid_metadata",
                param=param,
            )
        if wanted.get(key, value) != value:
            raise Unprocessable(
                f"{name} is given twice with different values", code="invalid_metadata", param=param
            )
        wanted[key] = value
    return wanted


@router.get(
    "", response_model=ListResponse[JobRead], openapi_extra={"parameters": [METADATA_FILTER_PARAMETER]}
)
def list_jobs(
    request: Request,
    session: SessionDep,
    principal: CurrentPrincipal,
    status: JobStatus | None = None,
    base: Annotated[str | None, Query(max_length=100, description="base version id")] = None,
    after: AfterQuery = None,
    limit: LimitQuery = DEFAULT_LIMIT,
) -> ListResponse[JobRead]:
    """The team's jobs, newest first; filter by status, base version and `metadata[key]=value`."""
    rows, has_more = service.list_jobs(
        session,
        viewer=principal,
        status=status,
        base=base,
        after=after,
        limit=limit,
        metadata=metadata_filter(request),
    )
    return list_response(rows, has_more, JobRead.of)


@router.get("/{job_id}", response_model=JobRead)
def get_job(job_id: str, session: SessionDep, principal: CurrentPrincipal) -> JobRead:
    return JobRead.of(service.get_job(session, job_id, viewer=principal))


class MetricsFormat(StrEnum):
    JSONL = "jsonl"
    CSV = "csv"


# The CSV's columns, in this order, whatever the job logged (a missing value is empty, loss_parts is a
# JSON object); JSONL rows carry every key as logged.
METRICS_CSV_COLUMNS = (
    "stage",
    "skill",
    "step",
    "total_steps",
    "method",
    "loss",
    "loss_parts",
    "loss_top5_share",
    "learning_rate",
    "grad_norm",
    "rollout_tokens_mean",
    "rollout_stop_fraction",
    "rollout_leak_fraction",
    "importance_weight_mean",
    "rollout_engine",
    "seconds",
    "rollout_seconds",
    "probe_divergence",
    "probe_nll",
    "probe_score",
    "probe_baseline",
    "probe_baseline_score",
    "probe_seconds",
    "learning_stalled",
)
METRICS_MEDIA_TYPES = {MetricsFormat.JSONL: "application/jsonl", MetricsFormat.CSV: "text/csv; charset=utf-8"}


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return str(value)


def _metrics_csv(rows: list[dict[str, Any]]) -> Iterator[str]:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(METRICS_CSV_COLUMNS)
    for row in rows:
        writer.writerow([_csv_cell(row.get(column)) for column in METRICS_CSV_COLUMNS])
    yield out.getvalue()


def _metrics_jsonl(rows: list[dict[str, Any]]) -> Iterator[str]:
    for row in rows:
        yield json.dumps(row, separators=(",", ":")) + "\n"


@router.get(
    "/{job_id}/metrics",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "one row per training step, in step order (the job's results file)",
            "content": {
                "application/jsonl": {"schema": {"type": "string"}},
                "text/csv": {"schema": {"type": "string"}},
            },
        }
    },
)
def get_job_metrics(
    job_id: str,
    session: SessionDep,
    principal: CurrentPrincipal,
    format: MetricsFormat = MetricsFormat.JSONL,
) -> StreamingResponse:
    """Every training step's metrics (stage by stage, step by step): JSONL rows as logged, or CSV with
    a fixed column set (`stage, skill, step, total_steps, method, loss, ...`)."""
    service.get_job(session, job_id, viewer=principal)
    rows = service.metrics_rows(session, job_id)
    body = _metrics_csv(rows) if format == MetricsFormat.CSV else _metrics_jsonl(rows)
    filename = f"{job_id}-metrics.{format}"
    return StreamingResponse(
        body,
        media_type=METRICS_MEDIA_TYPES[format],
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


@router.post("/{job_id}/cancel", response_model=JobRead)
def cancel_job(job_id: str, session: SessionDep, principal: JobsWriter) -> JobRead:
    return JobRead.of(service.cancel_job(session, job_id=job_id, actor=principal.actor, viewer=principal))


@router.get(
    "/{job_id}/events",
    response_model=ListResponse[EventRead],
    responses={
        200: {
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
            "description": "a page, or a stream with ?stream=true",
        }
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
            principal.token_id,
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
    request: Request,
    job_id: str,
    token_id: str,
    after_seq: int,
    poll: float,
    heartbeat: float,
    max_seconds: float,
) -> AsyncIterator[str]:
    """Poll the database (a fresh short session each time) and forward new events.

    The status is read before the events, so once a terminal status is seen, one more empty read
    proves every event of the job was sent (workers write the final event with the final status).
    The stream ends, sending nothing more, once its token is revoked: a reconnection is then a 401."""
    sessionmaker = request.app.state.read_sessionmaker  # polls only read

    def fetch(after: int) -> tuple[str, list[JobEvent]] | None:
        with sessionmaker() as session:
            if not token_is_active(session, token_id):
                return None
            status = service.status_of(session, job_id)
            assert status is not None  # checked before the stream started; jobs are never deleted
            return status, list(service.events_after(session, job_id, after, SSE_BATCH))

    started = last_write = time.monotonic()
    while True:
        fetched = await run_in_threadpool(fetch, after_seq)
        if fetched is None:
            return
        status, events = fetched
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
