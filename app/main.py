"""The FastAPI application: `create_app()` mounts the routers, the error handlers and the lifespan.

Run with ``uvicorn --factory app.main:create_app`` (what `sdft serve` does).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from anyio import to_thread
from fastapi import APIRouter, Depends, FastAPI
from fastapi.routing import APIRoute

from app.auth.router import router as tokens_router
from app.capacity import RequestSlots, request_slots, request_threads
from app.db import make_engine, make_sessionmaker, read_only_sessions
from app.errors import ERROR_RESPONSES, install_error_handlers
from app.files.router import router as files_router
from app.health import router as health_router
from app.inputs import BodySizeLimit, reject_nul_in_url
from app.jobs.router import router as jobs_router
from app.queue import TaskProducer, producer_info
from app.registry.aliases.router import router as aliases_router
from app.registry.forgetting.router import router as forgetting_router
from app.registry.router import router as models_router
from app.settings import Settings, get_settings
from app.storage import make_store
from app.suites.router import router as suites_router
from app.ui.router import mount_ui
from app.webhooks.router import router as webhooks_router

# Health, readiness and metrics answer 503 when the API is saturated (and /readyz when not ready), in the
# JSON error shape even where the success is plain text (so no `model`: it would take the route's type).
PROBE_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {
        "description": ERROR_RESPONSES[status]["description"],
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
    }
    for status in (500, 503)
}


def operation_id(route: APIRoute) -> str:
    """A route's OpenAPI operationId is its handler's name (`list_jobs`, `create_job`): stable, unique
    (tests/app/api/test_api_openapi.py checks), and what generated clients name their methods."""
    return route.name


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    engine = make_engine(
        settings.database_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout_seconds,
    )
    producer = TaskProducer(settings.broker_url)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # See app.capacity: every admitted request can hold a thread at once.
        limiter = to_thread.current_default_thread_limiter()
        limiter.total_tokens = max(limiter.total_tokens, request_threads(settings))
        yield
        engine.dispose()

    app = FastAPI(
        title="sdft-service",
        version="0.1.0",
        description="Add skills to a model with SDFT stages; a gated registry keeps earlier skills intact.",
        lifespan=lifespan,
        generate_unique_id_function=operation_id,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.producer = producer
    app.state.sessionmaker = make_sessionmaker(engine, info=producer_info(producer))
    app.state.read_sessionmaker = read_only_sessions(engine)
    app.state.store = make_store(settings.storage_path)

    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_upload_bytes=settings.max_upload_bytes)
    # Added last, so outermost: a refused request costs no body parsing.
    app.add_middleware(
        RequestSlots, slots=request_slots(settings), max_pending=settings.api_max_pending_requests
    )
    v1 = APIRouter(prefix="/v1", responses=ERROR_RESPONSES, dependencies=[Depends(reject_nul_in_url)])
    for router in (
        files_router,
        suites_router,
        jobs_router,
        models_router,
        aliases_router,
        forgetting_router,
        tokens_router,
        webhooks_router,
    ):
        v1.include_router(router)
    app.include_router(v1)
    app.include_router(health_router, responses=PROBE_RESPONSES)
    mount_ui(app)  # the dashboard under /ui (app.ui)
    return app
