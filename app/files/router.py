from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile

from app.auth.dependencies import CurrentPrincipal, JobsWriter
from app.db import ReadSessionDep, SessionDep
from app.deps import SettingsDep, StoreDep
from app.errors import PayloadTooLarge, Unprocessable
from app.evaluation.graders import KNOWN_GRADERS
from app.files import service
from app.files.schemas import FileRead
from app.files.service import FilePurpose
from app.inputs import check_text

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
