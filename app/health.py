"""Liveness, readiness (database and broker reachable) and Prometheus metrics. No auth: probes and
scrapers carry no tokens, and nothing here reveals more than counts."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse
from sqlalchemy import text

from app.db import SessionDep
from app.deps import ProducerDep
from app.errors import ServiceUnavailable
from app.metrics import render_metrics

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(session: SessionDep, producer: ProducerDep) -> dict[str, str]:
    checks: dict[str, str] = {}
    try:
        session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"unreachable: {type(exc).__name__}"
    try:
        producer.ping()
        checks["broker"] = "ok"
    except Exception as exc:
        checks["broker"] = f"unreachable: {type(exc).__name__}"
    if any(v != "ok" for v in checks.values()):
        raise ServiceUnavailable("not ready", code="not_ready", details={"checks": checks})
    return {"status": "ok", **checks}


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(session: SessionDep, producer: ProducerDep) -> PlainTextResponse:
    return PlainTextResponse(render_metrics(session, producer), media_type="text/plain; version=0.0.4")
