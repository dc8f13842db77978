"""Cursor pagination shared by every list endpoint: newest first, ``?after=<id>&limit=N``.

Ids are time-ordered (see `app.db.new_id`), so "older than the cursor" is ``id < after``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any, Generic, Literal, TypeVar

from fastapi import Query
from pydantic import BaseModel
from sqlalchemy import Select
from sqlalchemy.orm import InstrumentedAttribute, Session

DEFAULT_LIMIT = 20
MAX_LIMIT = 100

T = TypeVar("T")
Row = TypeVar("Row")

LimitQuery = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="page size")]
AfterQuery = Annotated[
    str | None, Query(min_length=1, max_length=100, description="return items older than this id")
]


class ListResponse(BaseModel, Generic[T]):
    object: Literal["list"] = "list"
    data: list[T]
    has_more: bool
    first_id: str | None
    last_id: str | None


def paginate(
    session: Session,
    stmt: Select[Any],
    order_column: InstrumentedAttribute[Any],
    *,
    after: object | None,
    limit: int,
) -> tuple[Sequence[Any], bool]:
    """One page of rows, newest first (descending `order_column`), and whether more exist.

    `after` is the cursor row's value of `order_column`: its id for tables with time-ordered ids, its
    sequence number for append-only logs (whose order within one millisecond matters)."""
    if after is not None:
        stmt = stmt.where(order_column < after)
    rows = session.scalars(stmt.order_by(order_column.desc()).limit(limit + 1)).all()
    return rows[:limit], len(rows) > limit


def list_response(rows: Sequence[Row], has_more: bool, to_schema: Callable[[Row], T]) -> ListResponse[T]:
    data = [to_schema(row) for row in rows]
    ids = [getattr(item, "id", None) for item in data]
    return ListResponse[T](
        data=data, has_more=has_more, first_id=ids[0] if ids else None, last_id=ids[-1] if ids else None
    )
