from __future__ import annotations

from fastapi import APIRouter, Response

from app.auth.dependencies import CurrentPrincipal, JobsWriter
from app.db import SessionDep
from app.deps import StoreDep
from app.pagination import DEFAULT_LIMIT, AfterQuery, LimitQuery, ListResponse, list_response
from app.suites import service
from app.suites.schemas import SuiteCreate, SuiteDeleted, SuiteRead

router = APIRouter(prefix="/suites", tags=["suites"])


@router.post(
    "",
    status_code=201,
    response_model=SuiteRead,
    responses={200: {"model": SuiteRead, "description": "the same suite already existed"}},
)
def create_suite(
    body: SuiteCreate, session: SessionDep, store: StoreDep, principal: JobsWriter, response: Response
) -> SuiteRead:
    row, created = service.create_suite(session, store, principal=principal, body=body)
    if not created:
        response.status_code = 200
    return SuiteRead.of(row)


@router.get("", response_model=ListResponse[SuiteRead])
def list_suites(
    session: SessionDep,
    principal: CurrentPrincipal,
    after: AfterQuery = None,
    limit: LimitQuery = DEFAULT_LIMIT,
) -> ListResponse[SuiteRead]:
    rows, has_more = service.list_suites(session, viewer=principal, after=after, limit=limit)
    return list_response(rows, has_more, SuiteRead.of)


@router.get("/{suite_id}", response_model=SuiteRead)
def get_suite(suite_id: str, session: SessionDep, principal: CurrentPrincipal) -> SuiteRead:
    return SuiteRead.of(service.get_suite(session, suite_id, viewer=principal))


@router.delete("/{suite_id}", response_model=SuiteDeleted)
def delete_suite(suite_id: str, session: SessionDep, principal: JobsWriter) -> SuiteDeleted:
    """Delete a suite no job uses (409 `suite_in_use` otherwise, as while the registry holds its
    scores); its file stays."""
    return SuiteDeleted(id=service.delete_suite(session, suite_id, viewer=principal))
