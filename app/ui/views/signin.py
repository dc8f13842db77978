"""Sign in (paste a token once), sign out."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse

from app.auth.service import authenticate, end_ui_sessions, ui_session_epoch
from app.db import SessionDep
from app.errors import Forbidden
from app.ui.auth import browser_session, session_codec
from app.ui.pages import PageRoute, render
from app.ui.session import (
    COOKIE_PATH,
    CSRF_FIELD,
    SESSION_COOKIE,
    SESSION_MAX_AGE_SECONDS,
    BrowserSession,
    new_session,
)

router = APIRouter(route_class=PageRoute)

HOME = "/ui/jobs"


def safe_next(target: str) -> str:
    """Where to go after signing in: a dashboard path only, never another site (`//evil`, `/\\evil`)."""
    if target.startswith("/ui/") and not target.startswith(("//", "/ui/sign-")) and "\\" not in target:
        return target
    return HOME


def set_session_cookie(response: Response, request: Request, browser: BrowserSession) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        session_codec(request).seal(browser),
        max_age=SESSION_MAX_AGE_SECONDS,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


@router.get("/ui")
@router.get("/ui/")
def home() -> RedirectResponse:
    return RedirectResponse(HOME, status_code=303)


def _form(
    request: Request, browser: BrowserSession, next_path: str, error: str | None, status_code: int = 200
) -> HTMLResponse:
    csrf = session_codec(request).csrf_token(browser)
    return render(
        request,
        "sign_in.html",
        status_code=status_code,
        csrf_token=csrf,
        next=safe_next(next_path),
        error=error,
    )


@router.get("/ui/sign-in")
def sign_in_page(request: Request, next: str = HOME) -> HTMLResponse:
    """The form; a browser without a session gets an anonymous one, so the form has a CSRF token too."""
    browser = browser_session(request)
    if browser is not None:
        return _form(request, browser, next, error=None)
    browser = new_session()
    response = _form(request, browser, next, error=None)
    set_session_cookie(response, request, browser)
    return response


@router.post("/ui/sign-in")
def sign_in(
    request: Request,
    session: SessionDep,
    token: Annotated[str, Form(max_length=200)] = "",
    next: Annotated[str, Form(max_length=2000)] = HOME,
    csrf_token: Annotated[str, Form(alias=CSRF_FIELD, max_length=200)] = "",
) -> Response:
    browser = browser_session(request)
    if browser is None or not session_codec(request).csrf_ok(browser, csrf_token):
        raise Forbidden(
            "the sign-in form expired or this browser refuses cookies: reload the page and try again",
            code="csrf_failed",
        )
    secret = token.strip()
    principal = authenticate(session, secret) if secret else None
    if principal is None:
        error = "That is not a valid token, or it was revoked."
        return _form(request, browser, next, error=error, status_code=401)
    response = RedirectResponse(safe_next(next), status_code=303)
    # A new nonce: a CSRF token seen before sign-in is worthless after it.
    epoch = ui_session_epoch(session, principal.token_id)
    set_session_cookie(response, request, new_session(secret, epoch))
    return response


@router.post("/ui/sign-out")
def sign_out(
    request: Request,
    session: SessionDep,
    csrf_token: Annotated[str, Form(alias=CSRF_FIELD, max_length=200)] = "",
) -> RedirectResponse:
    """Needs the CSRF token but not a valid API token: a revoked token can still sign out. Ends every
    dashboard session of the token, so a copy of this cookie is refused from now on."""
    browser = browser_session(request)
    if browser is not None and not session_codec(request).csrf_ok(browser, csrf_token):
        raise Forbidden("this form is stale: reload the page and sign out again", code="csrf_failed")
    principal = authenticate(session, browser.token) if browser is not None and browser.token else None
    if principal is not None:
        end_ui_sessions(session, principal.token_id)
    response = RedirectResponse("/ui/sign-in?notice=signed-out", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path=COOKIE_PATH)
    return response
