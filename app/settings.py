"""Where the service runs: paths, database, broker, limits. Never hyperparameters (those are StageConfig).

Every field reads an ``SDFT_``-prefixed environment variable (``SDFT_DATA_DIR``, ``SDFT_DATABASE_URL``, ...).
Paths left unset derive from ``data_dir``, so one variable moves the whole embedded install.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.contracts.rollout_settings import (
    EngineName,
    RolloutSettings,
    default_engine,
    rollout_settings_from_env,
)

MEGABYTE = 1024 * 1024
# Cores left to the API processes beside a worker on one machine (`sdft up`): they wait on the
# database and the network, so one core keeps them responsive.
API_CORES = 1


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. a container's or taskset's share)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_worker_threads(cores: int | None = None) -> int:
    """Every core (default: the available ones) but the API's, at least one."""
    return max(1, (cores or available_cores()) - API_CORES)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SDFT_", extra="ignore")

    data_dir: Path = Field(default_factory=lambda: Path.home() / ".sdft")
    # Empty means "derive from data_dir" (see _derive_paths).
    database_url: str = ""
    broker_url: str = ""
    storage_dir: Path | None = None
    admin_token_path: Path | None = None

    max_upload_bytes: int = Field(default=50 * MEGABYTE, ge=1)
    # SDFT_UI_SESSION_SECRET: signs and encrypts the dashboard's session cookies (app.ui). Unset, one
    # is created in <data_dir>/ui-session.key on first start; set it where API processes share no disk.
    ui_session_secret: SecretStr | None = None

    # API capacity, per API process (app.capacity): as many requests run at once as the database pool
    # has connections; the rest wait in arrival order, at most `api_max_pending_requests` in all,
    # beyond which the API answers 503 with Retry-After at once.
    api_workers: int = Field(default=2, ge=1)
    db_pool_size: int = Field(default=10, ge=1)
    db_max_overflow: int = Field(default=10, ge=0)
    # Only a connection held outside a request (a stuck SSE poll, a leak) makes a request wait this long.
    db_pool_timeout_seconds: float = Field(default=5.0, gt=0)
    api_max_pending_requests: int = Field(default=256, ge=1)
    # Server-sent events: how often the stream polls the database, sends a keep-alive comment,
    # and how long one stream may stay open before the client must reconnect with Last-Event-ID.
    sse_poll_seconds: float = Field(default=0.5, gt=0)
    sse_heartbeat_seconds: float = Field(default=15.0, gt=0)
    sse_max_seconds: float = Field(default=3600.0, gt=0)

    # Workers (read by workers/; kept here so one Settings describes a deployment).
    # A job lease not renewed for this long is abandoned and the job is handed to another worker.
    lease_ttl_seconds: float = Field(default=120.0, gt=0)
    # How long a job waits before checking again when another job holds its base version's lineage.
    lineage_wait_seconds: float = Field(default=30.0, gt=0)
    reaper_interval_seconds: float = Field(default=30.0, gt=0)
    # Far longer than any job, so the broker never redelivers a task while it runs (leases cover crashes).
    broker_visibility_timeout_seconds: int = Field(default=2 * 24 * 3600, ge=1)
    # Where rollouts are sampled: SDFT_ROLLOUT_* variables (see app.contracts.rollout_settings).
    rollout: RolloutSettings = Field(default_factory=rollout_settings_from_env)
    # SDFT_EVAL_BACKEND: the engine the jobs' evaluations (parent, candidate, gate) generate with:
    # vLLM where it is installed, else transformers; a vLLM engine that does not start falls back.
    eval_backend: EngineName = Field(default_factory=default_engine)
    # SDFT_WORKER_THREADS: torch threads of each worker process (and of its vLLM engine on CPU).
    # Two torch processes that each use every core slow each other down 10-40x, so by default the
    # worker takes the cores the API does not need (all but API_CORES, at least one); set it lower
    # when other work shares the machine.
    worker_threads: int = Field(default_factory=default_worker_threads, ge=1)

    # Webhooks (app.webhooks, workers/webhooks.py): each attempt (resolving, sending, the answer) takes
    # at most `webhook_timeout_seconds`; a failed delivery is retried after `webhook_backoff_seconds`,
    # doubling up to `webhook_backoff_max_seconds`, for `webhook_retry_window_seconds`; an endpoint is
    # disabled after `webhook_max_consecutive_failures` failed attempts in a row that also last as long
    # as one delivery's that many attempts take at this backoff (a burst during a short outage
    # disables nothing), or once its oldest undelivered event is older than the retry window.
    # Receivers on loopback, private or link-local addresses are refused unless
    # `webhook_allow_private_urls` (the workers could otherwise reach internal services).
    webhook_timeout_seconds: float = Field(default=10.0, gt=0)
    webhook_backoff_seconds: float = Field(default=30.0, gt=0)
    webhook_backoff_max_seconds: float = Field(default=3600.0, gt=0)
    webhook_retry_window_seconds: float = Field(default=24 * 3600.0, gt=0)
    webhook_max_consecutive_failures: int = Field(default=20, ge=1)
    webhook_allow_private_urls: bool = False

    @model_validator(mode="after")
    def _derive_paths(self) -> Settings:
        self.data_dir = self.data_dir.expanduser()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'sdft.sqlite'}"
        if not self.broker_url:
            # kombu's SQLAlchemy transport: a real queue in a file, no Redis needed for the embedded default.
            self.broker_url = f"sqla+sqlite:///{self.data_dir / 'broker.sqlite'}"
        if self.storage_dir is None:
            self.storage_dir = self.data_dir / "storage"
        if self.admin_token_path is None:
            self.admin_token_path = self.data_dir / "admin.token"
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def storage_path(self) -> Path:
        assert self.storage_dir is not None  # set by _derive_paths
        return self.storage_dir.expanduser()

    @property
    def admin_token_file(self) -> Path:
        assert self.admin_token_path is not None  # set by _derive_paths
        return self.admin_token_path.expanduser()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read from the environment on first use (never at import)."""
    return Settings()
