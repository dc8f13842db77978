"""The embedded default: API + one real Celery worker on one machine, SQLite as database and broker.

`sdft up` bootstraps on first start (migrations, admin token, the SmolLM2 base registered as the
first version with the alias `production`), then runs the worker as a child process and the API in
the foreground. Ctrl-C stops both; a second start reuses everything.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from app.bootstrap import ensure_embedded
from app.db import make_engine, make_sessionmaker, session_scope
from app.registry import service as registry
from app.registry.aliases import service as aliases
from app.settings import Settings

DEFAULT_ALIAS = "production"
WORKER_STOP_SECONDS = 30


@dataclass(frozen=True)
class Bootstrapped:
    token_path: Path
    base_version_id: str


def bootstrap(settings: Settings, base_dir: Path | None = None) -> Bootstrapped:
    """Migrate, write the admin token, import and register the default base; safe on every start."""
    from workers.models.smollm2 import DEFAULT_NAME, import_default

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    token_path = ensure_embedded(settings)
    model_dir = base_dir or import_default(settings.data_dir / "models" / DEFAULT_NAME)
    engine = make_engine(settings.database_url)
    try:
        with session_scope(make_sessionmaker(engine)) as session:
            version, _created = registry.register_base(
                session, path=model_dir, name=model_dir.name, description="embedded default base model"
            )
            if session.get(aliases.Alias, DEFAULT_ALIAS) is None:
                aliases.move(
                    session,
                    name=DEFAULT_ALIAS,
                    version_id=version.id,
                    actor="sdft up",
                    expected_version=None,
                    reason="first start: the embedded default base",
                )
            base_version_id = version.id
    finally:
        engine.dispose()
    return Bootstrapped(token_path, base_version_id)


def worker_command(queues: str = "default,gpu", concurrency: int = 1) -> list[str]:
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.celery_app",
        "worker",
        "-Q",
        queues,
        "--concurrency",
        str(concurrency),
        "--loglevel",
        "INFO",
        "--without-gossip",
        "--without-mingle",
    ]


def worker_env(settings: Settings) -> dict[str, str]:
    """The worker's environment: this process's settings, including the torch threads it may use
    (every core but the API's by default: two processes on all cores slow each other down)."""
    return {
        **os.environ,
        "SDFT_DATA_DIR": str(settings.data_dir),
        "SDFT_DATABASE_URL": settings.database_url,
        "SDFT_BROKER_URL": settings.broker_url,
        "SDFT_STORAGE_DIR": str(settings.storage_path),
        "SDFT_WORKER_THREADS": str(settings.worker_threads),
    }


@dataclass(frozen=True)
class LocalWorkers:
    """Two Celery processes: `gpu` trains (with the torch threads), `default` validates new jobs, so a
    job's validation never waits behind another job's training."""

    trainer: subprocess.Popen[bytes]
    validator: subprocess.Popen[bytes]

    @property
    def processes(self) -> tuple[subprocess.Popen[bytes], ...]:
        return (self.trainer, self.validator)


def start_worker(settings: Settings, log_path: Path | None = None) -> LocalWorkers:
    log = (log_path or settings.data_dir / "worker.log").open("ab")
    env = worker_env(settings)
    trainer = subprocess.Popen(worker_command("gpu"), env=env, stdout=log, stderr=subprocess.STDOUT)
    # Validation reads files and suites: one thread is plenty, and leaves the cores to training.
    validator_env = {**env, "SDFT_WORKER_THREADS": "1"}
    validator = subprocess.Popen(
        worker_command("default"), env=validator_env, stdout=log, stderr=subprocess.STDOUT
    )
    return LocalWorkers(trainer, validator)


def stop_worker(workers: LocalWorkers) -> None:
    """Warm shutdown (finish or checkpoint-free abort of the current step), then kill if it hangs."""
    running = [worker for worker in workers.processes if worker.poll() is None]
    for worker in running:
        worker.send_signal(signal.SIGTERM)
    for worker in running:
        try:
            worker.wait(timeout=WORKER_STOP_SECONDS)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def up(
    settings: Settings, host: str, port: int, *, worker: bool = True, api_workers: int | None = None
) -> int:
    import uvicorn

    booted = bootstrap(settings)
    print(f"sdft: data in {settings.data_dir}", file=sys.stderr)
    print(
        f"sdft: admin token in {booted.token_path} (export SDFT_TOKEN=$(cat {booted.token_path}))",
        file=sys.stderr,
    )
    print(f"sdft: base {booted.base_version_id} is alias '{DEFAULT_ALIAS}'", file=sys.stderr)
    process = start_worker(settings) if worker else None
    if process is not None:
        print(
            f"sdft: training worker pid {process.trainer.pid} ({settings.worker_threads} torch threads), "
            f"validation worker pid {process.validator.pid}, log {settings.data_dir / 'worker.log'}",
            file=sys.stderr,
        )
    else:
        print("sdft: no worker started (--no-worker): jobs wait in the queue", file=sys.stderr)
    workers = api_workers or settings.api_workers
    print(
        f"sdft: API on http://{host}:{port} ({workers} process{'es' if workers > 1 else ''}, "
        "docs at /docs); Ctrl-C stops it",
        file=sys.stderr,
    )
    print(f"sdft: dashboard on http://{host}:{port}/ui (sign in with the admin token)", file=sys.stderr)
    try:
        uvicorn.run(
            "app.main:create_app", factory=True, host=host, port=port, log_level="warning", workers=workers
        )
    finally:
        if process is not None:
            stop_worker(process)
    return 0
