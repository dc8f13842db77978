"""Upload a demonstrations or suite file and read its pre-flight report; create a suite from one."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Query, Request, Response, UploadFile
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import ValidationError
from sqlalchemy.orm import Session

from app.auth.service import Principal
from app.db import ReadSessionDep, SessionDep
from app.deps import SettingsDep, StoreDep
from app.errors import AppError, PayloadTooLarge, Unprocessable
from app.evaluation.graders import KNOWN_GRADERS
from app.files import service as files
from app.files.service import FilePurpose
from app.inputs import FILE_TOO_LARGE
from app.suites import service as suites
from app.suites.schemas import SuiteCreate
from app.ui.auth import JobsWriterForm, JobsWriterPage, PagePrincipal
from app.ui.pages import PageRoute, field_error, field_problems, render

router = APIRouter(route_class=PageRoute)

GRADERS = sorted(KNOWN_GRADERS)
SUITES_PAGE = 50
FormText = Annotated[str, Form(max_length=200)]


def file_too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the file is larger than the {limit}-byte limit", code=FILE_TOO_LARGE, param="file"
    )


def _upload_form(
    request: Request,
    *,
    purpose: str = "demonstrations",
    grader: str = "exact_match",
    model: str = "",
    error: AppError | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    return render(
        request,
        "upload.html",
        status_code=status_code,
        purposes=[str(p) for p in FilePurpose],
        graders=GRADERS,
        values={"purpose": purpose, "grader": grader, "model": model},
        error=field_error(error) if error is not None else None,
        report=error.details.get("report") if error is not None else None,
    )


@router.get("/ui/files")
def upload_page(
    request: Request,
    settings: SettingsDep,
    _principal: JobsWriterPage,
    error: Annotated[str, Query(max_length=32)] = "",
) -> HTMLResponse:
    """The form; with `?error=file_too_large` after BodySizeLimit (app.inputs) refused an upload before
    the view could read it (this GET itself succeeded: 200)."""
    if error == FILE_TOO_LARGE:
        return _upload_form(request, error=file_too_large(settings.max_upload_bytes))
    return _upload_form(request)


@router.post("/ui/files")
def upload(
    request: Request,
    session: SessionDep,
    read_session: ReadSessionDep,
    store: StoreDep,
    settings: SettingsDep,
    principal: JobsWriterForm,
    file: Annotated[UploadFile, File()],
    purpose: FormText = "demonstrations",
    grader: FormText = "exact_match",
    model: FormText = "",
) -> Response:
    """As POST /v1/files; a file that fails pre-flight comes back with its rows' problems inline."""
    try:
        limit = settings.max_upload_bytes
        content = file.file.read(limit + 1)
        if len(content) > limit:
            raise file_too_large(limit)
        if purpose not in {str(p) for p in FilePurpose}:
            raise Unprocessable(f"unknown purpose {purpose!r}", code="invalid_purpose", param="purpose")
        if grader not in KNOWN_GRADERS:
            raise Unprocessable(f"unknown grader {grader!r}", code="unknown_grader", param="grader")
        # Pre-flight on a read session, as the API does: a long check holds no write lock.
        name, report = files.check_upload(
            read_session,
            filename=file.filename,
            content=content,
            purpose=FilePurpose(purpose),
            model_ref=model.strip() or None,
            grader=grader,
        )
        read_session.close()  # one connection at a time, as RequestSlots assumes
        row = files.store_upload(
            session,
            store,
            principal=principal,
            name=name,
            content=content,
            purpose=FilePurpose(purpose),
            report=report,
        )
    except AppError as error:
        return _upload_form(
            request, purpose=purpose, grader=grader, model=model, error=error, status_code=error.status
        )
    return RedirectResponse(f"/ui/files/{row.id}", status_code=303)


@router.get("/ui/files/{file_id}")
def file_page(file_id: str, request: Request, session: SessionDep, principal: PagePrincipal) -> HTMLResponse:
    row = files.get_file(session, file_id, viewer=principal)
    return render(request, "file.html", file=row, report=row.preflight)


def _suites_page(
    request: Request,
    session: Session,
    principal: Principal,
    after: str | None,
    values: dict[str, Any],
    error: str | None = None,
    problems: list[dict[str, Any]] | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    rows, has_more = suites.list_suites(session, viewer=principal, after=after, limit=SUITES_PAGE)
    return render(
        request,
        "suites.html",
        status_code=status_code,
        suites=rows,
        next_after=rows[-1].id if has_more and rows else None,
        graders=GRADERS,
        values=values,
        error=error,
        problems=problems or [],
    )


@router.get("/ui/suites")
def suites_page(
    request: Request,
    session: SessionDep,
    principal: PagePrincipal,
    after: Annotated[str | None, Query(max_length=100)] = None,
    file: Annotated[str, Query(max_length=100)] = "",
) -> HTMLResponse:
    values = {"name": "", "file": file, "grader": "exact_match", "tolerance": "2", "min_score": ""}
    return _suites_page(request, session, principal, after, values)


@router.post("/ui/suites")
def create_suite(
    request: Request,
    session: SessionDep,
    store: StoreDep,
    principal: JobsWriterForm,
    name: FormText = "",
    file: FormText = "",
    grader: FormText = "exact_match",
    tolerance: FormText = "2",
    min_score: FormText = "",
) -> Response:
    values = {"name": name, "file": file, "grader": grader, "tolerance": tolerance, "min_score": min_score}
    try:
        body = SuiteCreate.model_validate(
            {
                "name": name.strip(),
                "file": file.strip(),
                "grader": grader,
                "tolerance": tolerance.strip() or 2.0,
                "min_score": min_score.strip() or None,
            }
        )
        row, _created = suites.create_suite(session, store, principal=principal, body=body)
    except ValidationError as exc:
        message = field_problems(exc.errors())
        return _suites_page(request, session, principal, None, values, message, status_code=422)
    except AppError as error:
        problems = error.details.get("problems")
        message = field_error(error)
        return _suites_page(
            request, session, principal, None, values, message, problems, status_code=error.status
        )
    return RedirectResponse(f"/ui/suites?notice=suite-created#{row.id}", status_code=303)
