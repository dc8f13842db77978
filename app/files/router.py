from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile
from fastapi.responses import StreamingResponse

from app.auth.dependencies import CurrentPrincipal, JobsWriter
from app.db import ReadSessionDep, SessionDep
from app.deps import SettingsDep, StoreDep
from app.errors import PayloadTooLarge, Unprocessable
from app.evaluation.graders import KNOWN_GRADERS
from app.files import service
from app.files.schemas import FileDeleted, FileRead
from app.files.service import FilePurpose
from app.inputs import check_text
from app.pagination import DEFAULT_LIMIT, AfterQuery, LimitQuery, ListResponse, list_response

router = APIRouter(prefix="/files", tags=["files"])

GraderName = Annotated[
    str, Form(description="regression_suite only: grader whose reference rules pre-flight checks")
]


@router.post("", status_code=201, response_model=FileRead)
def upload_file(
    session: SessionDep,
    read_session: ReadSessionDep,
    store: StoreDep,
    settings: SettingsDep,
    principal: JobsWriter,
    file: Annotated[UploadFile, File(description="UTF-8 JSONL")],
    purpose: Annotated[FilePurpose, Form()],
    model: Annotated[str | None, Form(description="version id or alias:NAME for token statistics")] = None,
    grader: GraderName = "exact_match",
) -> FileRead:
    """Validate a whole JSONL file and store it; a bad file is a 4xx with the full pre-flight report."""
    # BodySizeLimit already refused bodies that declared an oversized length; this catches the rest.
    limit = settings.max_upload_bytes
    content = file.file.read(limit + 1)
    if len(content) > limit:
        raise PayloadTooLarge(
            f"the file is larger than the {limit}-byte limit", code="file_too_large", param="file"
        )
    check_text(model, param="model")
    if grader not in KNOWN_GRADERS:
        raise Unprocessable(f"unknown grader {grader!r}", code="unknown_grader", param="grader")
    name, report = service.check_upload(
        read_session, filename=file.filename, content=content, purpose=purpose, model_ref=model, grader=grader
    )
    read_session.close()  # one connection at a time, as RequestSlots assumes
    row = service.store_upload(
        session, store, principal=principal, name=name, content=content, purpose=purpose, report=report
    )
    return FileRead.of(row)


@router.get("/{file_id}", response_model=FileRead)
def get_file(file_id: str, session: SessionDep, principal: CurrentPrincipal) -> FileRead:
    return FileRead.of(service.get_file(session, file_id, viewer=principal))


@router.get("", response_model=ListResponse[FileRead])
def list_files(
    session: SessionDep,
    principal: CurrentPrincipal,
    purpose: FilePurpose | None = None,
    after: AfterQuery = None,
    limit: LimitQuery = DEFAULT_LIMIT,
) -> ListResponse[FileRead]:
    """The team's files, newest first, optionally of one purpose."""
    rows, has_more = service.list_files(session, viewer=principal, purpose=purpose, after=after, limit=limit)
    return list_response(rows, has_more, FileRead.of)


@router.get(
    "/{file_id}/content",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"application/jsonl": {"schema": {"type": "string"}}}, "description": "the bytes"}
    },
)
def get_file_content(
    file_id: str, session: SessionDep, store: StoreDep, principal: CurrentPrincipal
) -> StreamingResponse:
    """The stored bytes, exactly as uploaded."""
    row = service.get_file(session, file_id, viewer=principal)
    return StreamingResponse(
        service.iter_content(service.open_content(store, row)),
        media_type="application/jsonl",
        headers={
            "Content-Length": str(row.bytes),
            "Content-Disposition": f'attachment; filename="{row.id}.jsonl"',
        },
    )


@router.delete("/{file_id}", response_model=FileDeleted)
def delete_file(file_id: str, session: SessionDep, principal: JobsWriter) -> FileDeleted:
    """Delete a file no suite and no job uses (409 `file_in_use` otherwise, whatever the job's status:
    later stages of a lineage replay earlier training files)."""
    return FileDeleted(id=service.delete_file(session, file_id, viewer=principal))
