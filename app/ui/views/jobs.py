"""Jobs: the list with live progress, a job's page (stages, metrics, probe and method, gate tables,
events as they arrive) and cancelling."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, StreamingResponse
from sqlalchemy.orm import Session

from app.auth.service import Principal
from app.db import SessionDep
from app.deps import SettingsDep
from app.errors import NotFound, Unprocessable
from app.jobs import router as jobs_api
from app.jobs import service as jobs
from app.jobs.models import Job
from app.jobs.states import JobStatus, is_terminal
from app.registry import service as registry
from app.registry.models import ModelVersion
from app.suites import service as suites
from app.ui.auth import JobsWriterForm, PagePrincipal, browser_session
from app.ui.job_view import NOTE_EVENT_TYPES, StageNotes, metric_charts, stage_notes
from app.ui.pages import PageRoute, render
from app.ui.progress import JobProgress, progress_events, while_signed_in

router = APIRouter(route_class=PageRoute)

PAGE_SIZE = 25
# The skill filter reads stages from each job's request, so it scans: at most this many jobs a page.
SKILL_SCAN_LIMIT = 500
SCAN_BATCH = 100
MAX_STREAMED_JOBS = PAGE_SIZE
# The Events table shows a job's newest non-metric events (metrics are charted, not listed).
MAX_EVENTS = 1_000


@dataclass(frozen=True)
class JobsPage:
    jobs: list[Job]
    next_after: str | None  # the cursor of the next (older) page, None on the last page
    scanned_to_limit: bool  # the skill filter stopped scanning at SKILL_SCAN_LIMIT


def has_skill(job: Job, skill: str) -> bool:
    return any(stage["skill"] == skill for stage in job.request["stages"])


def find_jobs(
    session: Session, viewer: Principal, status: JobStatus | None, skill: str, after: str | None
) -> JobsPage:
    if not skill:
        rows, has_more = jobs.list_jobs(
            session, viewer=viewer, status=status, base=None, after=after, limit=PAGE_SIZE
        )
        return JobsPage(list(rows), rows[-1].id if has_more and rows else None, False)
    found: list[Job] = []
    scanned = 0
    cursor = after
    while scanned < SKILL_SCAN_LIMIT:
        rows, has_more = jobs.list_jobs(
            session, viewer=viewer, status=status, base=None, after=cursor, limit=SCAN_BATCH
        )
        for job in rows:
            scanned += 1
            cursor = job.id
            if has_skill(job, skill):
                if len(found) == PAGE_SIZE:  # one more match: only now is there an older page
                    return JobsPage(found, found[-1].id, False)
                found.append(job)
        if not has_more:
            return JobsPage(found, None, False)
    return JobsPage(found, cursor, True)


def parse_status(status: str) -> JobStatus | None:
    if not status:
        return None
    try:
        return JobStatus(status)
    except ValueError:
        raise Unprocessable(f"unknown status {status!r}", code="invalid_status", param="status") from None


@router.get("/ui/jobs")
def jobs_page(
    request: Request,
    session: SessionDep,
    principal: PagePrincipal,
    status: Annotated[str, Query(max_length=16)] = "",
    skill: Annotated[str, Query(max_length=64)] = "",
    after: Annotated[str | None, Query(max_length=100)] = None,
) -> HTMLResponse:
    page = find_jobs(session, principal, parse_status(status), skill.strip(), after)
    rows = [JobProgress.of(job) for job in page.jobs]
    live = [row.id for row in rows if not row.terminal][:MAX_STREAMED_JOBS]
    return render(
        request,
        "jobs.html",
        rows=rows,
        page=page,
        status=status,
        skill=skill,
        statuses=[str(s) for s in JobStatus],
        live_ids=",".join(live),
    )


@router.get("/ui/jobs/progress")
def jobs_progress(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    principal: PagePrincipal,
    ids: Annotated[str, Query(max_length=MAX_STREAMED_JOBS * 101)] = "",
) -> StreamingResponse:
    """Server-sent `progress` events for the listed jobs (the list page's progress bars)."""
    job_ids = [job_id for job_id in ids.split(",") if job_id][:MAX_STREAMED_JOBS]
    for job_id in job_ids:
        jobs.get_job(session, job_id, viewer=principal)  # 404 for a job this team cannot see
    browser = browser_session(request)
    assert browser is not None and browser.token is not None  # page_principal checked both
    events = progress_events(
        request,
        job_ids,
        browser.token,
        poll=settings.sse_poll_seconds,
        heartbeat=settings.sse_heartbeat_seconds,
        max_seconds=settings.sse_max_seconds,
    )
    return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


@dataclass(frozen=True)
class StageView:
    index: int
    skill: str
    method: str
    rows: int
    suite_names: list[str]
    steps: int | str | None  # the resolved max_steps
    candidate: ModelVersion | None
    notes: StageNotes


def suite_name(session: Session, suite_id: str, viewer: Principal) -> str:
    try:
        return suites.get_suite(session, suite_id, viewer=viewer).name
    except NotFound:
        return suite_id


def stage_views(
    session: Session, job: Job, notes: dict[int, StageNotes], viewer: Principal
) -> list[StageView]:
    views = []
    for index, stage in enumerate(job.request["stages"]):
        candidate_id = job.candidate_version_ids[index] if index < len(job.candidate_version_ids) else None
        views.append(
            StageView(
                index=index,
                skill=stage["skill"],
                method=stage["method"],
                rows=stage["rows"],
                suite_names=[suite_name(session, suite_id, viewer) for suite_id in stage["suites"]],
                steps=stage.get("resolved", {}).get("max_steps"),
                candidate=registry.get_version(session, candidate_id) if candidate_id else None,
                notes=notes.get(index, StageNotes()),
            )
        )
    return views


@router.get("/ui/jobs/{job_id}")
def job_page(job_id: str, request: Request, session: SessionDep, principal: PagePrincipal) -> HTMLResponse:
    job = jobs.get_job(session, job_id, viewer=principal)
    log = jobs.job_log(session, job.id, newest=MAX_EVENTS, types=NOTE_EVENT_TYPES)
    rows = jobs.metrics_rows(session, job.id)  # after the log: the charts are no older than the stream
    general = [suite_name(session, suite_id, principal) for suite_id in job.request["general_suites"]]
    return render(
        request,
        "job.html",
        job=job,
        progress=JobProgress.of(job),
        terminal=is_terminal(JobStatus(job.status)),
        stages=stage_views(session, job, stage_notes(log.of_types), principal),
        general_suites=general,
        charts=metric_charts(rows),
        events=log.newest,
        older_events=log.count - len(log.newest),
        step_events=len(rows),
        last_event_id=log.last_event_id,
    )


@router.get("/ui/jobs/{job_id}/chart")
def job_chart(job_id: str, request: Request, session: SessionDep, principal: PagePrincipal) -> HTMLResponse:
    """The charts alone, which the job page fetches again as metrics arrive."""
    job = jobs.get_job(session, job_id, viewer=principal)
    return render(request, "_charts.html", charts=metric_charts(jobs.metrics_rows(session, job.id)))


@router.get("/ui/jobs/{job_id}/events")
def job_event_stream(
    job_id: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    principal: PagePrincipal,
    after: Annotated[str | None, Query(max_length=100, description="the last event the page shows")] = None,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=100)] = None,
) -> StreamingResponse:
    """The API's event stream (GET /v1/jobs/{id}/events?stream=true) for a signed-in browser: from the
    page's last event, or on reconnection from the last one received; it ends once the session's
    token is revoked."""
    stream = jobs_api.list_events(
        job_id, request, session, settings, principal, stream=True, last_event_id=last_event_id or after
    )
    assert isinstance(stream, StreamingResponse)  # stream=True always streams
    browser = browser_session(request)
    assert browser is not None and browser.token is not None  # page_principal checked both
    stream.body_iterator = while_signed_in(request, browser.token, stream.body_iterator)
    return stream


@router.post("/ui/jobs/{job_id}/cancel")
def cancel_job(job_id: str, session: SessionDep, principal: JobsWriterForm) -> RedirectResponse:
    jobs.cancel_job(session, job_id=job_id, actor=principal.actor, viewer=principal)
    return RedirectResponse(f"/ui/jobs/{job_id}?notice=cancelled", status_code=303)
