"""Who is asking, for pages: the session cookie's token authenticated again on every request, the CSRF
token checked on every POST, scopes checked exactly as the API checks them (app.auth.dependencies)."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, Request

from app.auth.service import Principal, Scope, authenticate, ui_session_epoch
from app.db import ReadSessionDep
from app.errors import Forbidden, ServiceUnavailable
from app.ui.pages import SignInRequired, Viewer
from app.ui.session import CSRF_FIELD, SESSION_COOKIE, BrowserSession, SessionCodec


def session_codec(request: Request) -> SessionCodec:
    codec: SessionCodec | None = request.app.state.ui_session_codec
    if codec is None:
        raise ServiceUnavailable(
            "the dashboard has no session secret: set SDFT_UI_SESSION_SECRET or make the data dir writable",
            code="ui_disabled",
        )
    return codec


def browser_session(request: Request) -> BrowserSession | None:
    return session_codec(request).open(request.cookies.get(SESSION_COOKIE))


def page_principal(request: Request, session: ReadSessionDep) -> Principal:
    browser = browser_session(request)
    if browser is None:
        raise SignInRequired("expired" if request.cookies.get(SESSION_COOKIE) else None)
    if browser.token is None:
        raise SignInRequired()
    # On a read session, given back at once, as the API authenticates (app.auth.dependencies): a POST
    # takes SQLite's write lock only when its handler first writes, not for the whole request.
    principal = authenticate(session, browser.token)
    current_epoch = None if principal is None else ui_session_epoch(session, principal.token_id)
    session.close()
    if principal is None:
        raise SignInRequired("revoked")
    if browser.epoch != current_epoch:  # signed out since this cookie was sealed
        raise SignInRequired("signed-out")
    request.state.viewer = Viewer(principal, session_codec(request).csrf_token(browser))
    return principal


PagePrincipal = Annotated[Principal, Depends(page_principal)]


async def form_principal(request: Request, principal: PagePrincipal) -> Principal:
    """The signed-in principal, for a POST whose form carries this session's CSRF token."""
    browser = browser_session(request)
    form = await request.form()
    if browser is None or not session_codec(request).csrf_ok(browser, form.get(CSRF_FIELD)):
        raise Forbidden(
            "this form is stale or was not sent from this dashboard (CSRF check failed): "
            "reload the page and try again",
            code="csrf_failed",
        )
    return principal


FormPrincipal = Annotated[Principal, Depends(form_principal)]


def _check(principal: Principal, scope: Scope) -> Principal:
    if not principal.has(scope):
        raise Forbidden(f"this token lacks the {scope!s} scope", code="insufficient_scope")
    return principal


# The scope checks are async only because they never block: no thread hop for a comparison.
def page_scope(scope: Scope) -> Callable[[Principal], Coroutine[Any, Any, Principal]]:
    """A page only useful with `scope` (a form to fill in)."""

    async def check(principal: PagePrincipal) -> Principal:
        return _check(principal, scope)

    return check


def form_scope(scope: Scope) -> Callable[[Principal], Coroutine[Any, Any, Principal]]:
    """A POST that needs `scope`: the CSRF check first, then the scope."""

    async def check(principal: FormPrincipal) -> Principal:
        return _check(principal, scope)

    return check


JobsWriterPage = Annotated[Principal, Depends(page_scope(Scope.JOBS_WRITE))]
JobsWriterForm = Annotated[Principal, Depends(form_scope(Scope.JOBS_WRITE))]
PromoterPage = Annotated[Principal, Depends(page_scope(Scope.MODELS_PROMOTE))]
PromoterForm = Annotated[Principal, Depends(form_scope(Scope.MODELS_PROMOTE))]
AdminPage = Annotated[Principal, Depends(page_scope(Scope.ADMIN))]
AdminForm = Annotated[Principal, Depends(form_scope(Scope.ADMIN))]
