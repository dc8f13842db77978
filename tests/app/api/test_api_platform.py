"""Auth, errors, health and metrics, migrations, bootstrap, storage and the import boundary."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.bootstrap import (
    alembic_config,
    database_problem,
    ensure_admin_token,
    ensure_broker_queues,
    ensure_database,
)
from app.jobs import service as jobs
from app.jobs.states import JobStatus
from app.settings import Settings
from app.storage import LocalStore

from .conftest import drain_broker
from .test_api_files import assert_error

REPO_ROOT = Path(__file__).resolve().parents[3]

# --------------------------------------------------------------------------- auth


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/v1/jobs"),
        ("get", "/v1/models"),
        ("post", "/v1/jobs"),
        ("put", "/v1/aliases/production"),
        ("get", "/v1/files/x"),
    ],
)
def test_requests_without_a_token_are_401(client: TestClient, method: str, path: str) -> None:
    response = client.request(method, path)
    error = assert_error(response, 401, "missing_token", None)
    assert error["type"] == "authentication_error" and response.headers["WWW-Authenticate"] == "Bearer"
    assert_error(
        client.request(method, path, headers={"Authorization": "Bearer sdft_wrong"}),
        401,
        "invalid_token",
        None,
    )


def test_scopes(
    client: TestClient,
    reader: dict[str, str],
    promoter: dict[str, str],
    admin: dict[str, str],
    job_body: dict[str, Any],
) -> None:
    assert client.get("/v1/jobs", headers=reader).status_code == 200  # any token reads
    assert_error(client.post("/v1/jobs", json=job_body, headers=reader), 403, "insufficient_scope", None)
    assert_error(client.post("/v1/jobs", json=job_body, headers=promoter), 403, "insufficient_scope", None)
    assert (
        client.post("/v1/jobs", json=job_body, headers=admin).status_code == 201
    )  # admin implies every scope


def test_tokens_are_stored_hashed(db: sessionmaker[Session], tokens: Any) -> None:
    from sqlalchemy import select

    from app.auth.models import ApiToken
    from app.auth.service import hash_token

    with db() as session:
        stored = session.scalars(select(ApiToken.token_sha256)).all()
    assert tokens.writer not in stored and hash_token(tokens.writer) in stored


# --------------------------------------------------------------------------- errors


def test_unknown_routes_and_methods_use_the_error_shape(client: TestClient, reader: dict[str, str]) -> None:
    assert_error(client.get("/v1/nothing", headers=reader), 404, "not_found", None)
    assert_error(client.delete("/v1/jobs", headers=reader), 405, "method_not_allowed", None)


def test_an_unexpected_error_is_a_500_without_a_stack_trace(backend: Settings) -> None:
    from app.main import create_app

    def explode() -> None:
        raise RuntimeError("secret internals")

    app = create_app(backend)  # its own instance: the shared app's routes (and fuzzed schema) stay as shipped
    app.add_api_route("/boom-test", explode)
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/boom-test")
    app.state.engine.dispose()
    assert response.status_code == 500
    assert response.json() == {
        "error": {
            "type": "server_error",
            "code": "internal_error",
            "message": "internal error",
            "param": None,
        }
    }


# --------------------------------------------------------------------------- health and metrics


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ok", "database": "ok", "broker": "ok"}


def test_readiness_fails_when_the_broker_is_down(backend: Settings) -> None:
    from app.main import create_app

    broken = create_app(backend.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"}))
    with TestClient(broken) as client:
        error = assert_error(client.get("/readyz"), 503, "not_ready", None)
    broken.state.engine.dispose()
    assert error["checks"]["database"] == "ok" and error["checks"]["broker"].startswith("unreachable")


def test_metrics(
    client: TestClient,
    writer: dict[str, str],
    job_body: dict[str, Any],
    db: sessionmaker[Session],
    backend: Settings,
) -> None:
    drain_broker(backend)
    job_id = client.post("/v1/jobs", json=job_body, headers=writer).json()["id"]
    with db.begin() as session:
        jobs.advance(session, job_id, JobStatus.VALIDATING, JobStatus.QUEUED)
    text = client.get("/metrics").text
    lines = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert int(lines['sdft_jobs{status="queued"}']) >= 1
    assert {f'sdft_jobs{{status="{s}"}}' for s in JobStatus} <= set(lines)
    assert int(lines['sdft_stage_duration_seconds_count{status="validating"}']) >= 1
    assert lines['sdft_queue_depth{queue="default"}'] == "1"  # the message of the job created above
    drain_broker(backend)
    assert 'sdft_queue_depth{queue="default"} 0' in client.get("/metrics").text


def test_openapi_docs_are_served(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {
        "/v1/files",
        "/v1/suites",
        "/v1/jobs",
        "/v1/models",
        "/v1/aliases/{name}",
        "/v1/forgetting",
    } <= set(paths)


# --------------------------------------------------------------------------- migrations and bootstrap


def test_alembic_check_finds_no_missing_migration(backend: Settings) -> None:
    command.check(alembic_config(backend.database_url))  # raises AutogenerateDiffsDetected on drift


def test_migrations_downgrade_and_upgrade(tmp_path: Path) -> None:
    config = alembic_config(f"sqlite:///{tmp_path / 'roundtrip.sqlite'}")
    command.upgrade(config, "head")
    command.downgrade(config, "base")
    command.upgrade(config, "head")
    command.check(config)


def test_embedded_bootstrap_creates_the_admin_token_once(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    ensure_database(settings)
    path = ensure_admin_token(settings)
    assert path == tmp_path / "data" / "admin.token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    secret = path.read_text().strip()
    assert ensure_admin_token(settings) == path and path.read_text().strip() == secret  # reused
    from app.main import create_app

    app = create_app(settings)
    with TestClient(app) as client:
        response = client.post(
            "/v1/models",
            json={"path": "/nowhere", "name": "x"},
            headers={"Authorization": f"Bearer {secret}"},
        )
    app.state.engine.dispose()
    assert response.status_code == 422  # authenticated as admin; the path is what is wrong


def test_embedded_data_is_private_to_its_user(tmp_path: Path) -> None:
    # The database holds webhook signing secrets and the storage the uploads: nothing another local
    # user can read (was a 755 folder and 644 files). In a child process: the umask is process-wide.
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    code = (
        "import sys; from pathlib import Path; from app.bootstrap import ensure_embedded; "
        "from app.settings import Settings; from app.storage import make_store; "
        "settings = Settings(data_dir=Path(sys.argv[1])); ensure_embedded(settings); "
        "make_store(settings.storage_path).put_bytes(b'uploaded')"
    )
    subprocess.run([sys.executable, "-c", code, str(data)], check=True, cwd=REPO_ROOT)
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    written = [path for path in data.rglob("*") if path.is_file()]
    assert any(path.name == "sdft.sqlite" for path in written) and any(
        "blobs" in path.parts for path in written
    )
    assert all(stat.S_IMODE(path.stat().st_mode) & 0o077 == 0 for path in written), [
        (path, oct(path.stat().st_mode)) for path in written
    ]


def test_commands_opening_the_database_name_a_missing_or_unmigrated_one(tmp_path: Path) -> None:
    missing = Settings(data_dir=tmp_path / "typo")
    problem = database_problem(missing)
    assert problem is not None and "no database at" in problem and "--data-dir" in problem
    assert not (tmp_path / "typo").exists(), "nothing is created on the way"
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "sdft.sqlite").write_bytes(b"")
    problem = database_problem(Settings(data_dir=tmp_path / "empty"))
    assert problem is not None and "has no schema" in problem
    ready = Settings(data_dir=tmp_path / "ready")
    ensure_database(ready)
    assert database_problem(ready) is None


def test_embedded_bootstrap_declares_the_task_queues_before_any_worker(tmp_path: Path) -> None:
    """Two workers starting together on a fresh SQLite broker both inserted the `gpu` queue row and one
    died on the unique constraint (CI, 2026-11-30): the queues now exist before a worker starts."""
    import sqlite3

    from app.queue import TASK_QUEUES

    settings = Settings(data_dir=tmp_path / "data")
    settings.data_dir.mkdir(parents=True)
    ensure_broker_queues(settings)
    ensure_broker_queues(settings)  # every start calls it
    broker_file = settings.broker_url.removeprefix("sqla+sqlite:///")
    with sqlite3.connect(broker_file) as connection:
        names = [row[0] for row in connection.execute("SELECT name FROM kombu_queue")]
    assert sorted(names) == sorted(set(TASK_QUEUES.values()))


def test_settings_derive_from_the_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SDFT_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("SDFT_MAX_UPLOAD_BYTES", "123")
    settings = Settings()
    assert settings.database_url == f"sqlite:///{tmp_path / 'sdft.sqlite'}"
    assert settings.broker_url == f"sqla+sqlite:///{tmp_path / 'broker.sqlite'}"
    assert settings.storage_path == tmp_path / "storage" and settings.max_upload_bytes == 123


def test_sqlite_runs_in_wal_mode_with_foreign_keys(tmp_path: Path) -> None:
    from sqlalchemy import text

    from app.db import make_engine

    engine = make_engine(f"sqlite:///{tmp_path / 'x.sqlite'}")
    with engine.connect() as connection:
        assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert connection.execute(text("PRAGMA foreign_keys")).scalar() == 1
    engine.dispose()


# --------------------------------------------------------------------------- storage


def test_local_store_is_content_addressed(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    first = store.put_bytes(b"hello", suffix=".txt")
    assert first == store.put_bytes(b"hello", suffix=".txt")
    assert first.uri.startswith("file://") and first.sha256.startswith("2cf24dba") and first.size == 5
    with store.open(first.uri) as f:
        assert f.read() == b"hello"
    source = tmp_path / "ckpt"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "w.bin").write_bytes(b"\x00\x01")
    tree = store.put_dir(source)
    assert (
        store.exists(tree.uri) and (store.local_path(tree.uri) / "sub" / "w.bin").read_bytes() == b"\x00\x01"
    )
    assert store.put_dir(source) == tree
    assert store.put_file(source / "sub" / "w.bin").sha256 == store.put_bytes(b"\x00\x01").sha256
    assert not store.exists("file:///etc/passwd")  # outside the store
    with pytest.raises(ValueError):
        store.put_bytes(b"x", suffix="/../../evil")


# --------------------------------------------------------------------------- import boundary


def test_app_never_imports_torch_or_workers() -> None:
    script = """
import importlib, pkgutil, sys
import app
for module in pkgutil.walk_packages(app.__path__, "app."):
    importlib.import_module(module.name)
from app.main import create_app
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "workers", "transformers", "vllm"))
print(",".join(bad))
"""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


# --------------------------------------------------------------------------- NUL (PostgreSQL cannot store it)


def test_nul_characters_are_400_naming_the_field(
    client: TestClient, admin: dict[str, str], job_body: dict[str, Any], counts: Any
) -> None:
    before = counts()
    body = {
        **job_body,
        "stages": [{**job_body["stages"][0], "hyperparameters": {"teacher_template": "a\x00"}}],
    }
    assert_error(
        client.post("/v1/jobs", json=body, headers=admin),
        400,
        "invalid_characters",
        "stages[0].hyperparameters.teacher_template",
    )
    assert_error(
        client.post("/v1/models", json={"path": "/x", "name": "a\x00"}, headers=admin),
        400,
        "invalid_characters",
        "name",
    )
    assert_error(
        client.get("/v1/jobs", params={"after": "\x00"}, headers=admin), 400, "invalid_characters", "after"
    )
    assert_error(client.get("/v1/jobs/job_%00", headers=admin), 400, "invalid_characters", "job_id")
    response = client.post(
        "/v1/files",
        data={"purpose": "demonstrations", "model": "mv\x00"},
        files={"file": ("a.jsonl", b"{}")},
        headers=admin,
    )
    assert_error(response, 400, "invalid_characters", "model")
    assert counts() == before


def test_producer_on_redis_sends_and_counts() -> None:
    """The production broker: one message per send, visible in the queue depth (Redis on 127.0.0.1)."""
    import redis

    from app.queue import TaskName, TaskProducer

    database = 14  # a database of its own, so other users of this Redis are not touched
    client = redis.Redis(host="127.0.0.1", port=6379, db=database)
    client.delete("default")
    producer = TaskProducer(f"redis://127.0.0.1:6379/{database}")
    try:
        producer.ping()
        assert producer.queue_depths()["default"] == 0
        producer.send(TaskName.VALIDATE_JOB, "job_redis")
        assert producer.queue_depths()["default"] == 1
        message = json.loads(client.lindex("default", 0))
        assert (
            message["headers"]["task"] == "sdft.jobs.run"
            and message["headers"]["argsrepr"] == "['job_redis']"
        )
    finally:
        client.delete("default")
