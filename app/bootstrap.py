"""First start of the embedded default: migrate the database, create the admin token file.

`sdft up` (the lead's command) and `sdft serve` on SQLite call these; both are safe to call on every start.
"""

from __future__ import annotations

import os
from contextlib import suppress
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import inspect, make_url
from sqlalchemy.exc import OperationalError

import app
from app.auth.service import Scope, authenticate, create_token
from app.db import make_engine, make_sessionmaker, session_scope
from app.settings import Settings

MIGRATIONS_DIR = Path(app.__file__).resolve().parent.parent / "migrations"
ADMIN_TOKEN_NAME = "admin (bootstrap)"


def alembic_config(database_url: str) -> Config:
    """An Alembic config that works from any working directory (and without alembic.ini)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    config.attributes["configure_logging"] = False
    return config


def ensure_database(settings: Settings) -> None:
    """Bring the schema to the latest migration (`alembic upgrade head`)."""
    command.upgrade(alembic_config(settings.database_url), "head")


def ensure_broker_queues(settings: Settings) -> None:
    """Declare the task queues on the embedded SQLite broker before any worker starts: kombu's
    SQLAlchemy transport creates a queue row on first use with a select-then-insert, so two workers
    starting together can both insert and one dies on the unique constraint. Redis needs no
    declaring."""
    if not settings.broker_url.startswith("sqla+"):
        return
    from kombu import Connection, Queue

    from app.queue import TASK_QUEUES

    with Connection(settings.broker_url) as connection:
        channel = connection.default_channel
        for name in sorted(set(TASK_QUEUES.values())):
            Queue(name, channel=channel).declare()


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
    os.chmod(tmp, 0o600)  # the umask cannot widen it, but an existing tmp file kept its old mode
    os.replace(tmp, path)


def ensure_admin_token(settings: Settings) -> Path:
    """Create an admin token on first start and write it to `settings.admin_token_file` (mode 600).
    Later starts reuse it while it is still a valid admin token in this database."""
    path = settings.admin_token_file
    engine = make_engine(settings.database_url)
    try:
        with session_scope(make_sessionmaker(engine)) as session:
            if path.is_file():
                principal = authenticate(session, path.read_text().strip())
                if principal is not None and principal.has(Scope.ADMIN):
                    return path
            _token, secret = create_token(session, name=ADMIN_TOKEN_NAME, scopes=[Scope.ADMIN])
            _write_private(path, secret)
    finally:
        engine.dispose()
    return path


def make_private(settings: Settings) -> None:
    """The data folder, and everything this process and its children write, readable by this user
    only: the database holds webhook signing secrets and the storage the uploaded data."""
    os.umask(0o077)
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    with suppress(PermissionError):  # a folder someone else owns keeps its mode
        os.chmod(settings.data_dir, 0o700)


def database_problem(settings: Settings) -> str | None:
    """Why commands that open the database directly (`sdft gc`, `sdft tokens create`) cannot use it,
    or None: a SQLite file that does not exist (a mistyped --data-dir), or a schema never migrated."""
    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite" and url.database and not Path(url.database).expanduser().is_file():
        return (
            f"no database at {url.database}: start the service once (sdft up), or pass the right --data-dir"
        )
    engine = make_engine(settings.database_url)
    try:
        with engine.connect() as connection:
            if not inspect(connection).has_table("alembic_version"):
                where = url.render_as_string()  # the password hidden
                return f"the database at {where} has no schema: start the service once (sdft up)"
    except OperationalError as error:
        return f"cannot open the database at {url.render_as_string()}: {error.orig}"
    finally:
        engine.dispose()
    return None


def ensure_embedded(settings: Settings) -> Path:
    """Everything the embedded default needs before its API or a worker starts: a private data
    folder, the schema, the broker's queues and the admin token (whose path it returns)."""
    make_private(settings)
    ensure_database(settings)
    ensure_broker_queues(settings)
    return ensure_admin_token(settings)
