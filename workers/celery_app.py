"""The Celery app of the workers: `celery -A workers.celery_app worker -Q gpu,default`.

Done properly for long GPU tasks: JSON only, late acks (a task is acknowledged when it ends, not when
it starts), a task whose worker process dies is rejected back to the queue, prefetch 1 (a worker
never holds a second job while it trains one), stable task names, job id as the only argument. The
broker's visibility timeout is far longer than any job so a running task is never redelivered while
it runs; a worker killed outright is covered by the job lease and the reaper (workers/reaper.py).
"""

from __future__ import annotations

from celery import Celery

from app.queue import TASK_QUEUES
from app.settings import Settings, get_settings


def transport_options(broker_url: str, visibility_timeout: int) -> dict[str, int]:
    """Only brokers with a visibility timeout take one (kombu's SQLAlchemy transport hands every option
    to `create_engine`, which rejects it; it keeps fetched messages invisible until acked instead)."""
    return {"visibility_timeout": visibility_timeout} if broker_url.startswith(("redis", "sqs")) else {}


def make_celery(settings: Settings) -> Celery:
    app = Celery("sdft-worker", broker=settings.broker_url, set_as_current=True)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue="default",
        task_routes={str(name): {"queue": queue} for name, queue in TASK_QUEUES.items()},
        broker_transport_options=transport_options(
            settings.broker_url, settings.broker_visibility_timeout_seconds
        ),
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        imports=("workers.tasks",),
    )
    return app


# Celery's `-A` needs an app object at import; the worker process is where settings are read anyway.
app = make_celery(get_settings())
