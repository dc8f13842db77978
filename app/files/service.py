"""Upload, validate and look up files. A file is stored only after its whole pre-flight passes."""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator, Sequence
from enum import StrEnum
from typing import Any, BinaryIO, Literal
from urllib.parse import unquote

from sqlalchemy import Text, cast, select
from sqlalchemy.orm import Session

from app.auth.service import Principal, can_see, team_filter
from app.contracts.problems import RowProblem
from app.db import new_id, now
from app.errors import BadRequest, Conflict, InternalError, NotFound, Unprocessable
from app.files.models import UploadedFile
from app.files.preflight import (
    LengthCounter,
    load_tokenizer,
    preflight_demonstrations,
    preflight_suite,
)
from app.jobs.models import Job
from app.pagination import paginate
from app.registry import service as registry
from app.registry.models import Alias
from app.storage import Store
from app.suites.models import Suite

DEFAULT_TOKENIZER_ALIAS = "production"
MAX_FILENAME_CHARS = 255
TOKEN_APPROXIMATION_NOTE = "messages rendered as '<role>: <content>' lines: approximates the chat template"


class FilePurpose(StrEnum):
    DEMONSTRATIONS = "demonstrations"
    REGRESSION_SUITE = "regression_suite"


class FileStatus(StrEnum):
    READY = "ready"


def check_filename(name: str | None) -> str:
    """A plain file name: no directories, no parent references, no control characters. Checked after
    percent-decoding too, since clients encode odd bytes that way ("x%00", "..%2Fx")."""
    if name is None or _bad_filename(name) or _bad_filename(unquote(name)):
        raise BadRequest(
            f"invalid file name {name!r}: give a plain name without directories or control characters",
            code="invalid_filename",
            param="file",
        )
    return name


def _bad_filename(name: str) -> bool:
    return (
        not name
        or len(name) > MAX_FILENAME_CHARS
        or name in (".", "..")
        or any(sep in name for sep in ("/", "\\"))
        or name.startswith("~")
        or (len(name) > 1 and name[1] == ":")  # a Windows drive, C:x
        or any(unicodedata.category(ch).startswith("C") for ch in name)  # NUL and other control chars
    )


def decode_utf8(content: bytes) -> str:
    try:
        return content.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(
            f"the file is not UTF-8 (invalid byte at offset {exc.start})",
            code="invalid_encoding",
            param="file",
        ) from None


def length_counter(session: Session, model_ref: str | None) -> LengthCounter:
    """Token counter from the given model (id or alias:NAME), else the `production` alias, else characters."""
    if model_ref is not None:
        version = registry.resolve_version_ref(session, model_ref, param="model")
    else:
        alias = session.get(Alias, DEFAULT_TOKENIZER_ALIAS)
        if alias is None:
            return LengthCounter(
                None,
                {
                    "model_version_id": None,
                    "note": f"no model given and no {DEFAULT_TOKENIZER_ALIAS!r} alias: "
                    "token statistics unavailable, lengths are characters",
                },
            )
        version = registry.get_version(session, alias.model_version_id, param="model")
    # Training keeps the tokenizer, so the lineage root's is the one to use when the version's is not local.
    for candidate in (version, registry.get_version(session, version.base_id)):
        directory = registry.local_model_dir(candidate)
        tokenizer = load_tokenizer(directory) if directory is not None else None
        if tokenizer is not None:
            return LengthCounter(
                tokenizer,
                {
                    "model_version_id": version.id,
                    "tokenizer_from": candidate.id,
                    "note": TOKEN_APPROXIMATION_NOTE,
                },
            )
    return LengthCounter(
        None,
        {
            "model_version_id": version.id,
            "note": "the model's tokenizer is not readable here: lengths are characters",
        },
    )


def run_preflight(
    session: Session, *, text: str, purpose: FilePurpose, model_ref: str | None, grader: str
) -> dict[str, Any]:
    counter = length_counter(session, model_ref)
    if purpose == FilePurpose.DEMONSTRATIONS:
        report = preflight_demonstrations(text, counter)
    else:
        report = preflight_suite(text, grader, counter)
    return {"purpose": str(purpose), **report}


def check_upload(
    read_session: Session,
    *,
    filename: str | None,
    content: bytes,
    purpose: FilePurpose,
    model_ref: str | None = None,
    grader: str = "exact_match",
) -> tuple[str, dict[str, Any]]:
    """(file name, pre-flight report) of a valid upload; a bad one raises 4xx with the report. Only
    reads the database: a long pre-flight never holds a write lock (on SQLite, every writer's)."""
    name = check_filename(filename)
    text = decode_utf8(content)
    report = run_preflight(read_session, text=text, purpose=purpose, model_ref=model_ref, grader=grader)
    if not report["valid"]:
        first = RowProblem(**report["problems"][0])
        raise Unprocessable(
            f"{report['problems_total']} problem(s) in the file, first: {first}; nothing was stored "
            "(see error.report)",
            code="invalid_file",
            param="file",
            details={"report": report},
        )
    return name, report


def store_upload(
    session: Session,
    store: Store,
    *,
    principal: Principal,
    name: str,
    content: bytes,
    purpose: FilePurpose,
    report: dict[str, Any],
) -> UploadedFile:
    """Store a checked upload and insert its row, owned by the principal's team."""
    stored = store.put_bytes(content, suffix=".jsonl")
    row = UploadedFile(
        id=new_id("file"),
        purpose=str(purpose),
        filename=name,
        bytes=len(content),
        sha256=stored.sha256,
        storage_uri=stored.uri,
        status=FileStatus.READY,
        preflight=report,
        created_by=principal.token_id,
        team=principal.team,
        created_at=now(),
    )
    session.add(row)
    session.flush()
    return row


def create_file(
    session: Session,
    store: Store,
    *,
    principal: Principal,
    filename: str | None,
    content: bytes,
    purpose: FilePurpose,
    model_ref: str | None = None,
    grader: str = "exact_match",
) -> UploadedFile:
    """Validate the whole file, then store it and insert its row; a bad file raises 4xx and stores
    nothing. (The API checks with a read-only session first: see app.files.router.)"""
    name, report = check_upload(
        session, filename=filename, content=content, purpose=purpose, model_ref=model_ref, grader=grader
    )
    return store_upload(
        session, store, principal=principal, name=name, content=content, purpose=purpose, report=report
    )


def get_file(
    session: Session,
    file_id: str,
    *,
    param: str = "id",
    viewer: Principal | None = None,
    lock: Literal["share", "update"] | None = None,
) -> UploadedFile:
    """The file; 404 when it does not exist or belongs to another team than `viewer`'s. `lock` takes
    its row lock until commit (PostgreSQL): "share" for a user of the file, "update" to delete it, so
    a job or suite bound to it and its deletion cannot both commit."""
    locking = None if lock is None else {"read": lock == "share"}
    row = session.get(UploadedFile, file_id, with_for_update=locking)
    if row is None or not can_see(viewer, row.team):
        raise NotFound(f"no file {file_id!r}", code="file_not_found", param=param)
    return row


def require_ready_file(
    session: Session, file_id: str, *, purpose: FilePurpose, param: str, viewer: Principal | None = None
) -> UploadedFile:
    """The file, checked to exist (for `viewer`), be ready and have the purpose the caller needs."""
    row = get_file(session, file_id, param=param, viewer=viewer, lock="share")
    if row.purpose != purpose:
        raise Unprocessable(
            f"{file_id} was uploaded as {row.purpose}, not {purpose}", code="wrong_file_purpose", param=param
        )
    if row.status != FileStatus.READY:
        raise Unprocessable(f"{file_id} is {row.status}, not ready", code="file_not_ready", param=param)
    return row


def read_text(store: Store, row: UploadedFile) -> str:
    with store.open(row.storage_uri) as f:
        return f.read().decode("utf-8")


CONTENT_CHUNK_BYTES = 1024 * 1024


def list_files(
    session: Session, *, viewer: Principal, purpose: FilePurpose | None, after: str | None, limit: int
) -> tuple[Sequence[UploadedFile], bool]:
    """A page of the files `viewer` may see, newest first, optionally of one purpose."""
    stmt = select(UploadedFile).where(*team_filter(viewer, UploadedFile.team))
    if purpose is not None:
        stmt = stmt.where(UploadedFile.purpose == str(purpose))
    return paginate(session, stmt, UploadedFile.id, after=after, limit=limit)


def open_content(store: Store, row: UploadedFile) -> BinaryIO:
    """The stored bytes, opened before any response is sent: a blob gone from storage is an error the
    client sees, not a 200 whose body stops short."""
    try:
        return store.open(row.storage_uri)
    except FileNotFoundError:
        raise InternalError(
            f"the stored bytes of {row.id} are missing from storage; upload the file again",
            code="file_content_missing",
            param="id",
        ) from None


def iter_content(handle: BinaryIO) -> Iterator[bytes]:
    """An opened file's bytes, in chunks (uploads go up to the upload limit); closes it at the end."""
    with handle:
        while chunk := handle.read(CONTENT_CHUNK_BYTES):
            yield chunk


def jobs_referencing(session: Session, object_id: str) -> Sequence[Job]:
    """Jobs whose request names `object_id` anywhere (a file or suite id): a text search narrows the
    rows, the caller checks where exactly. Any status counts: an ended job's files and suites stay in
    its lineage (later stages replay earlier training files and re-run earlier suites)."""
    text = cast(Job.request, Text)
    return session.scalars(
        select(Job).where(text.contains(object_id, autoescape=True)).order_by(Job.id)
    ).all()


def in_use_error(what: str, kind: str, users: Sequence[tuple[str, str, str]], viewer: Principal) -> Conflict:
    """409 `{kind}_in_use` naming the first user, (kind, id, team), if `viewer` may see it."""
    user_kind, user_id, team = users[0]
    named = f"{user_kind} {user_id}" if can_see(viewer, team) else f"another team's {user_kind}"
    more = f" and {len(users) - 1} more" if len(users) > 1 else ""
    return Conflict(
        f"{what} is used by {named}{more}: what a job or a suite refers to is kept",
        code=f"{kind}_in_use",
        param="id",
    )


def delete_file(session: Session, file_id: str, *, viewer: Principal) -> str:
    """Delete a file nobody uses: 409 `file_in_use` while any suite is bound to it or any job (whatever
    its status) trains on it. The stored bytes go with the next `sdft gc` (blobs are shared by content)."""
    row = get_file(session, file_id, viewer=viewer, lock="update")
    suites = session.scalars(select(Suite).where(Suite.file_id == row.id).order_by(Suite.id)).all()
    users = [("suite", suite.id, suite.team) for suite in suites]
    users += [
        ("job", job.id, job.team)
        for job in jobs_referencing(session, row.id)
        if any(stage.get("training_file") == row.id for stage in job.request.get("stages", []))
    ]
    if users:
        raise in_use_error(f"file {file_id}", "file", users, viewer)
    session.delete(row)
    session.flush()
    return file_id
