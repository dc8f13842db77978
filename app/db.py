"""Engine, sessions and the declarative base. `get_session` is the only place that commits or rolls back.

The same models run on SQLite (embedded default) and PostgreSQL (production). SQLite gets WAL (readers
never block the writer), enforced foreign keys and a busy timeout, and pysqlite's own transaction
handling is replaced by explicit BEGINs so that SAVEPOINTs (used for idempotent inserts) work.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy import JSON, Engine, MetaData, create_engine, event, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

SQLITE_BUSY_TIMEOUT_MS = 10_000
# Execution option marking a session that only reads (see `read_only_sessions`).
READ_ONLY_OPTION = "sdft_read_only"

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# JSON documents: JSONB on PostgreSQL (indexable, compact), JSON text elsewhere.
JSONDoc = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def now() -> int:
    """Timestamps are unix seconds, as in OpenAI's API."""
    return int(time.time())


def new_id(prefix: str) -> str:
    """Prefixed, time-ordered ids (`job_0193a...`): sorting by id sorts by creation, which cursor
    pagination relies on; 64 random bits keep ids unguessable and collision-free."""
    return f"{prefix}_{time.time_ns() // 1_000_000:012x}{secrets.token_hex(8)}"


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves (see module docstring)
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")  # safe with WAL; a crash loses at most the last commit
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # IMMEDIATE takes the write lock up front. A deferred transaction that reads, then writes after
        # another connection committed (the API cancelling a job while a worker logs a step) fails at
        # once with "database is locked": WAL cannot upgrade a stale read snapshot, and busy_timeout
        # does not apply. Transactions here are short, so serializing them costs little; read-only
        # ones (GET requests) take no lock at all, so reads never queue behind submissions.
        if connection.get_execution_options().get(READ_ONLY_OPTION):
            connection.exec_driver_sql("BEGIN DEFERRED")
        else:
            connection.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(
    database_url: str, *, pool_size: int = 5, max_overflow: int = 10, pool_timeout: float = 30.0
) -> Engine:
    """The pool arguments are SQLAlchemy's defaults; the API sizes them from Settings."""
    url = make_url(database_url)
    pool = {"pool_size": pool_size, "max_overflow": max_overflow, "pool_timeout": pool_timeout}
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(url, connect_args={"check_same_thread": False}, **pool)
        else:  # in-memory databases use a single-connection pool that takes no size
            engine = create_engine(url, connect_args={"check_same_thread": False})
        _configure_sqlite(engine)
        return engine
    return create_engine(url, pool_pre_ping=True, **pool)


def one_at_a_time(session: Session, key: str) -> None:
    """Until this transaction ends, another one calling this with the same key waits here: a check
    over rows that may not exist yet (a count against a limit) cannot be raced. A PostgreSQL advisory
    lock; SQLite writers are serialised already."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"), {"key": key})


def make_sessionmaker(engine: Engine, info: dict[str, Any] | None = None) -> sessionmaker[Session]:
    """`info` seeds every session's `.info` (app.queue keeps its task producer there)."""
    # expire_on_commit=False: responses are built from objects after the commit.
    return sessionmaker(bind=engine, expire_on_commit=False, info=info or {})


def read_only_sessions(engine: Engine) -> sessionmaker[Session]:
    """Sessions for requests that only read: on SQLite they take no write lock (a plain BEGIN)."""
    return make_sessionmaker(engine.execution_options(**{READ_ONLY_OPTION: True}))


# An `after_commit` hook cannot raise (the session is mid-commit); it leaves its error here and
# `session_scope` raises it once the commit is complete (app.queue uses this for unsent messages).
AFTER_COMMIT_ERROR_KEY = "after_commit_error"


def commit(session: Session) -> None:
    """Commit, then raise what an `after_commit` hook left (the rows are saved whatever it is)."""
    session.commit()
    error = session.info.pop(AFTER_COMMIT_ERROR_KEY, None)
    if error is not None:
        raise error


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """Commit on success, roll back on any error. Workers and the CLI use this; the API uses get_session."""
    session = factory()
    try:
        yield session
        commit(session)
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def get_session(request: Request) -> Iterator[Session]:
    """Request-scoped session: commits after the handler returns, before the response is sent.
    GET requests never write (HTTP semantics), so they get a read-only session."""
    if request.method in SAFE_METHODS:
        factory = request.app.state.read_sessionmaker
    else:
        factory = request.app.state.sessionmaker
    with session_scope(factory) as session:
        yield session


# scope="function": the commit happens before the response leaves, so a client that reads right after
# a write sees it, and a failed commit becomes an error response instead of a lost write.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def get_read_session(request: Request) -> Iterator[Session]:
    """A read-only session whatever the method: authentication and checks that precede a write take no
    write lock (on SQLite, a write transaction blocks every other writer until it ends)."""
    with session_scope(request.app.state.read_sessionmaker) as session:
        yield session


ReadSessionDep = Annotated[Session, Depends(get_read_session, scope="function")]
