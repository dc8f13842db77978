"""API test fixtures: the real app on a real database (a SQLite file, and PostgreSQL on 127.0.0.1 for
tests marked `postgres`), the schema built by `alembic upgrade head`, a real kombu broker on a SQLite file.

Databases are per test session and per backend; tests share them, so each test names what it creates
uniquely (`unique()`) and compares counts before and after rather than assuming an empty table.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
import uvicorn
from alembic import command
from fastapi import FastAPI
from fastapi.testclient import TestClient
from kombu import Connection
from safetensors.numpy import save_file
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from app.auth.service import Scope, create_token
from app.bootstrap import alembic_config
from app.client import main
from app.db import Base, make_sessionmaker, session_scope
from app.main import create_app
from app.settings import Settings

POSTGRES_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
TEST_MAX_UPLOAD_BYTES = 256 * 1024
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


# --------------------------------------------------------------------------- databases


def _postgres_database() -> Iterator[str]:
    name = f"sdft_test_{secrets.token_hex(6)}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Settings for one backend, with the schema migrated to head."""
    data_dir = tmp_path_factory.mktemp(f"sdft-{request.param}")
    if request.param == "sqlite":
        urls: Iterator[str] = iter([f"sqlite:///{data_dir / 'sdft.sqlite'}"])
    else:
        urls = _postgres_database()
    database_url = next(urls)
    settings = Settings(
        data_dir=data_dir,
        database_url=database_url,
        broker_url=f"sqla+sqlite:///{data_dir / 'broker.sqlite'}",
        max_upload_bytes=TEST_MAX_UPLOAD_BYTES,
        sse_poll_seconds=0.05,
        sse_heartbeat_seconds=0.2,
    )
    command.upgrade(alembic_config(database_url), "head")
    yield settings
    for _ in urls:  # runs the generator's cleanup (drops the PostgreSQL database)
        pass


@pytest.fixture(scope="session")
def app(backend: Settings) -> Iterator[FastAPI]:
    application = create_app(backend)
    yield application
    application.state.engine.dispose()


@pytest.fixture(scope="session")
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def db(app: FastAPI) -> sessionmaker[Session]:
    """A session factory on the app's database (no task producer: tests write rows directly)."""
    return make_sessionmaker(app.state.engine)


@pytest.fixture()
def counts(db: sessionmaker[Session], backend: Settings) -> Callable[[], dict[str, int]]:
    """Rows per table and files in storage: compare before/after to prove nothing was written."""

    def snapshot() -> dict[str, int]:
        with db() as session:
            rows = {
                t.name: session.scalar(select(func.count()).select_from(t)) or 0
                for t in Base.metadata.sorted_tables
            }
        storage = backend.storage_path
        rows["storage_files"] = sum(1 for p in storage.rglob("*") if p.is_file()) if storage.exists() else 0
        return rows

    return snapshot


# --------------------------------------------------------------------------- auth


@dataclass(frozen=True)
class Tokens:
    admin: str
    writer: str
    promoter: str
    reader: str
    rival: str  # jobs:write in another team

    @staticmethod
    def header(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="session")
def tokens(db: sessionmaker[Session]) -> Tokens:
    secrets_by_role = {}
    with session_scope(db) as session:
        for role, scopes in {
            "admin": [Scope.ADMIN],
            "writer": [Scope.JOBS_WRITE],
            "promoter": [Scope.MODELS_PROMOTE],
            "reader": [],
            "rival": [Scope.JOBS_WRITE],
        }.items():
            team = "rival" if role == "rival" else "default"
            _token, secret = create_token(session, name=f"test-{role}", scopes=scopes, team=team)
            secrets_by_role[role] = secret
    return Tokens(**secrets_by_role)


@pytest.fixture(scope="session")
def admin(tokens: Tokens) -> dict[str, str]:
    return Tokens.header(tokens.admin)


@pytest.fixture(scope="session")
def writer(tokens: Tokens) -> dict[str, str]:
    return Tokens.header(tokens.writer)


@pytest.fixture(scope="session")
def promoter(tokens: Tokens) -> dict[str, str]:
    return Tokens.header(tokens.promoter)


@pytest.fixture(scope="session")
def reader(tokens: Tokens) -> dict[str, str]:
    return Tokens.header(tokens.reader)


@pytest.fixture(scope="session")
def rival(tokens: Tokens) -> dict[str, str]:
    return Tokens.header(tokens.rival)


# --------------------------------------------------------------------------- broker


def drain_broker(settings: Settings, queue: str = "default") -> list[dict[str, Any]]:
    """Consume every waiting message: [{"task": name, "args": [...]}] in send order."""
    messages = []
    with Connection(settings.broker_url) as connection:
        channel = connection.default_channel
        channel.queue_declare(queue=queue, durable=True, auto_delete=False)
        while (message := channel.basic_get(queue, no_ack=True)) is not None:
            args, _kwargs, _embed = json.loads(message.body)
            messages.append({"task": message.headers["task"], "args": args})
    return messages


# --------------------------------------------------------------------------- a tiny model directory


def write_model_dir(root: Path) -> Path:
    """A chat model directory without torch: config, a trained WordLevel tokenizer, a chat template and
    a valid safetensors file of small numpy tensors."""
    root.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    corpus = ["what is one plus one", "two plus two is four", "user assistant system call the tool"]
    tokenizer.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=["<unk>", "<eos>"]))
    tokenizer.save(str(root / "tokenizer.json"))
    (root / "tokenizer_config.json").write_text(
        json.dumps({"chat_template": CHAT_TEMPLATE, "eos_token": "<eos>"})
    )
    (root / "config.json").write_text(
        json.dumps({"model_type": "llama", "vocab_size": tokenizer.get_vocab_size()})
    )
    rng = np.random.default_rng(0)
    save_file(
        {"embed.weight": rng.standard_normal((tokenizer.get_vocab_size(), 8)).astype(np.float32)},
        root / "model.safetensors",
    )
    return root


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_model_dir(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="session")
def base_model(client: TestClient, admin: dict[str, str], model_dir: Path) -> dict[str, Any]:
    response = client.post("/v1/models", json={"path": str(model_dir), "name": "tiny-base"}, headers=admin)
    assert response.status_code in (200, 201), response.text
    return response.json()


# --------------------------------------------------------------------------- uploads


def demonstration_lines(n: int = 4) -> str:
    rows = [
        {"prompt": f"what is {i} plus {i}", "demonstration": f"{i} plus {i} is {2 * i}"} for i in range(n)
    ]
    return "".join(json.dumps(r) + "\n" for r in rows)


def suite_lines(n: int = 3) -> str:
    rows = [{"prompt": f"what is {i} plus {i}", "reference": str(2 * i)} for i in range(n)]
    return "".join(json.dumps(r) + "\n" for r in rows)


def upload(
    client: TestClient,
    headers: dict[str, str],
    content: str | bytes,
    purpose: str,
    filename: str = "data.jsonl",
    **form: str,
) -> Any:
    raw = content.encode() if isinstance(content, str) else content
    return client.post(
        "/v1/files",
        data={"purpose": purpose, **form},
        files={"file": (filename, raw, "application/jsonl")},
        headers=headers,
    )


@pytest.fixture(scope="session")
def training_file(client: TestClient, writer: dict[str, str], base_model: dict[str, Any]) -> str:
    response = upload(client, writer, demonstration_lines(), "demonstrations", model=base_model["id"])
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def make_suite(client: TestClient, headers: dict[str, str], **settings: Any) -> dict[str, Any]:
    uploaded = upload(client, headers, suite_lines(), "regression_suite")
    assert uploaded.status_code == 201, uploaded.text
    body = {"name": unique("suite"), "file": uploaded.json()["id"], "grader": "exact_match", **settings}
    response = client.post("/v1/suites", json=body, headers=headers)
    assert response.status_code == 201, response.text
    return dict(response.json())


@pytest.fixture(scope="session")
def suite(client: TestClient, writer: dict[str, str]) -> dict[str, Any]:
    return make_suite(client, writer)


@pytest.fixture()
def job_body(base_model: dict[str, Any], training_file: str, suite: dict[str, Any]) -> dict[str, Any]:
    return {
        "base": base_model["id"],
        "stages": [
            {
                "skill": "arithmetic",
                "training_file": training_file,
                "suites": [suite["id"]],
                "method": "sdft",
                "hyperparameters": {"max_steps": 4, "learning_rate": "auto", "lora_rank": 8},
            }
        ],
        "general_suites": [],
        "auto_promote": None,
    }


# --------------------------------------------------------------------------- a live server (SSE, CLI)


@dataclass(frozen=True)
class LiveServer:
    url: str


@contextmanager
def serve_in_thread(app: FastAPI) -> Iterator[LiveServer]:
    """`app` served by uvicorn on a free port in a thread (the caller owns the app's lifespan)."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield LiveServer(url=f"http://127.0.0.1:{port}")
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="session")
def live_server(app: FastAPI) -> Iterator[LiveServer]:
    """The same app over real HTTP: streaming for SSE and the CLI."""
    with serve_in_thread(app) as server:
        yield server


CliRun = Callable[..., tuple[int, Any, str]]


def cli_runner(
    server: LiveServer,
    default_token: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    config_home: Path,
) -> CliRun:
    """`run(*argv, token=...)`: the `sdft` client against `server`; (exit code, JSON or text, stderr)."""
    monkeypatch.setenv("SDFT_API_URL", server.url)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config_home))

    def run(*argv: str, token: str = default_token) -> tuple[int, Any, str]:
        monkeypatch.setenv("SDFT_TOKEN", token)
        code = main(list(argv))
        out, err = capsys.readouterr()
        try:
            return code, json.loads(out), err
        except json.JSONDecodeError:
            return code, out, err

    return run


@pytest.fixture()
def cli(
    live_server: LiveServer,
    tokens: Tokens,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> CliRun:
    """The `sdft` client against the live server, as a jobs writer (test_api_client.py: as admin)."""
    return cli_runner(live_server, tokens.writer, monkeypatch, capsys, tmp_path / "config")


@pytest.fixture()
def tight_app(backend: Settings) -> Iterator[FastAPI]:
    """The API with a one-connection pool that gives up after 0.2 s: busy (503) while it is held."""
    settings = backend.model_copy(
        update={"db_pool_size": 1, "db_max_overflow": 0, "db_pool_timeout_seconds": 0.2}
    )
    application = create_app(settings)
    yield application
    application.state.engine.dispose()
