"""The dashboard, mounted into the API app: pages under /ui, their static files under /ui/static."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.staticfiles import StaticFiles

from app.errors import NotFound
from app.inputs import check_text, reject_nul_in_url
from app.ui.pages import UI_DIR, PageRoute
from app.ui.secret import session_secret
from app.ui.session import SessionCodec
from app.ui.views import aliases, compose, files, jobs, models, signin, tokens

log = logging.getLogger(__name__)

fallback = APIRouter(route_class=PageRoute)


@fallback.get("/ui/{path:path}")
def unknown_page(path: str) -> None:
    raise NotFound(f"no page /ui/{path}", code="page_not_found")


async def reject_nul(request: Request) -> None:
    """NUL in the path or the query, as the API refuses it (app.inputs), or in a form field (no model
    validates a form): a 400 page naming it, before the text reaches the database."""
    reject_nul_in_url(request)
    if request.method == "POST":
        for name, value in (await request.form()).multi_items():
            if isinstance(value, str):
                check_text(value, param=name)


def mount_ui(app: FastAPI) -> None:
    try:
        app.state.ui_session_codec = SessionCodec(session_secret(app.state.settings))
    except OSError as exc:  # the API runs without the dashboard rather than not at all
        log.warning("dashboard disabled: no session secret (%s); set SDFT_UI_SESSION_SECRET", exc)
        app.state.ui_session_codec = None
    app.mount("/ui/static", StaticFiles(directory=UI_DIR / "static"), name="ui-static")
    # compose before jobs: /ui/jobs/new is not a job id; the catch-all last.
    checks = [Depends(reject_nul)]
    for view in (signin, compose, jobs, files, models, aliases, tokens):
        app.include_router(view.router, include_in_schema=False, dependencies=checks)
    app.include_router(fallback, include_in_schema=False, dependencies=checks)
