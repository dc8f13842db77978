"""What a worker process brings to the jobs it runs: settings, a database, its identity, and how it
samples rollouts and generates evaluations."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache

from sqlalchemy.orm import Session, sessionmaker

from app.db import make_engine, make_sessionmaker, session_scope
from app.settings import Settings
from workers.models.placement import Placement
from workers.rollout.base import BackendFactory


@lru_cache(maxsize=4)
def _worker_id(pid: int) -> str:
    return f"{socket.gethostname()}:{pid}:{uuid.uuid4().hex[:8]}"


def worker_id() -> str:
    """This process's identity as a lease owner. Worked out in the process that asks (never at import
    in a parent that forks children later), so two pool children never share one."""
    return _worker_id(os.getpid())


@dataclass
class WorkerContext:
    settings: Settings
    worker_id: str
    lease_ttl_seconds: float = 120.0
    backend_factory: BackendFactory | None = None  # None: transformers.generate on the student
    rollout_backend: str = "transformers"  # the name behind backend_factory (RolloutSettings.backend)
    # The engine evaluations generate with; the worker task passes settings.eval_backend.
    eval_backend: str = "transformers"
    placement: Placement | None = None
    # The worker task passes its process-wide sessions; tests and scripts may leave it to be built.
    sessions: sessionmaker[Session] | None = None

    def __post_init__(self) -> None:
        if self.sessions is None:
            self.sessions = make_sessionmaker(make_engine(self.settings.database_url))

    @contextmanager
    def session(self) -> Iterator[Session]:
        assert self.sessions is not None  # set in __post_init__
        with session_scope(self.sessions) as session:
            yield session
