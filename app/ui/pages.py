"""Rendering: the Jinja2 templates, the page route that turns errors into pages, the headers every
page carries."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates

from app.auth.service import Principal, Scope
from app.errors import AppError, Unprocessable, loc_to_param
from app.ui.session import COOKIE_PATH, CSRF_FIELD, SESSION_COOKIE

UI_DIR = Path(__file__).resolve().parent
SIGN_IN_PATH = "/ui/sign-in"

# Fixed texts for ?notice=...: a redirect after a POST names its outcome without echoing user input.
NOTICES = {
    "signed-out": "You are signed out.",
    "revoked": "Your token is no longer valid (revoked?): sign in again.",
    "expired": "Your session expired: sign in again.",
    "promoted": "The alias was moved.",
    "unchanged": "Nothing changed: the alias already pointed at that version.",
    "rolled-back": "The alias was rolled back.",
    "token-revoked": "The token was revoked.",
    "cancelled": "The job was cancelled.",
    "suite-created": "The suite was created.",
}

# Pages load only their own script and styles; no page may be framed (promote buttons under a
# transparent frame would be clickjacking); forms post only here.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    # Pages carry CSRF tokens (and once, a new token's secret): never cache them.
    "Cache-Control": "no-store",
}


@dataclass(frozen=True)
class Viewer:
    """Who is signed in, as templates need it: write controls show only where `can` says so."""

    principal: Principal
    csrf_token: str

    def can(self, scope: str) -> bool:
        return self.principal.has(Scope(scope))


class SignInRequired(Exception):
    """No usable session: the page redirects to sign-in, with a notice saying why (a NOTICES key)."""

    def __init__(self, notice: str | None = None) -> None:
        super().__init__(notice or "sign in")
        self.notice = notice


def _when(timestamp: int | None) -> str:
    if timestamp is None:
        return "–"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(timestamp))


def _points(value: float | None, signed: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:+.1f}" if signed else f"{value:.1f}"


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.0%}"


def _number(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.4g}"


def _why(choice: dict[str, Any]) -> str:
    """A method choice's reason without the method it starts with ("sft_retain: the teacher ...")."""
    return str(choice["reason"]).removeprefix(f"{choice['method']}: ")


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(UI_DIR / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,  # a misspelt name is an error in tests, not a blank cell
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(when=_when, points=_points, percent=_percent, number=_number, why=_why)
    env.globals.update(CSRF_FIELD=CSRF_FIELD)
    return env


templates = Jinja2Templates(env=_environment())


def render(request: Request, template: str, *, status_code: int = 200, **context: Any) -> HTMLResponse:
    notice = NOTICES.get(request.query_params.get("notice", ""))
    base = {"viewer": getattr(request.state, "viewer", None), "notice": notice}
    response = templates.TemplateResponse(request, template, {**base, **context}, status_code=status_code)
    assert isinstance(response, HTMLResponse)
    return response


ERROR_TITLES = {
    400: "Bad request",
    401: "Not signed in",
    403: "Not allowed",
    404: "Not found",
    409: "Conflict",
    413: "Too large",
    422: "Invalid input",
    503: "Busy",
}


def error_page(request: Request, error: AppError) -> HTMLResponse:
    title = ERROR_TITLES.get(error.status, "Error")
    response = render(request, "error.html", status_code=error.status, title=title, error=error)
    for name, value in (error.headers or {}).items():
        response.headers[name] = value
    return response


def field_problems(errors: Sequence[Any]) -> str:
    """Pydantic's errors as a form shows them: each prefixed by the field it is about, as the API
    names it (`stages[0].training_file: ...`)."""
    messages = []
    for err in list(errors)[:5]:
        where = loc_to_param(err.get("loc", ()))
        messages.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
    return "; ".join(messages) or "invalid form"


def field_error(error: AppError) -> str:
    """A service's error as a form shows it: prefixed by the field it is about, when it names one."""
    return f"{error.param}: {error.message}" if error.param else error.message


def validation_error(exc: RequestValidationError) -> Unprocessable:
    """A form field that does not fit, worded as the API words it."""
    return Unprocessable(field_problems(exc.errors()), code="invalid_request")


def sign_in_redirect(request: Request, reason: SignInRequired) -> RedirectResponse:
    query = []
    if reason.notice:
        query.append(f"notice={reason.notice}")
    if request.method == "GET":
        query.append(
            "next=" + quote(request.url.path + (f"?{request.url.query}" if request.url.query else ""))
        )
    response = RedirectResponse(SIGN_IN_PATH + ("?" + "&".join(query) if query else ""), status_code=303)
    if reason.notice in ("revoked", "expired"):
        response.delete_cookie(SESSION_COOKIE, path=COOKIE_PATH)
    return response


class PageRoute(APIRoute):
    """A route whose errors are pages: an AppError (from a service or a check) renders error.html with
    its status, a missing or revoked session redirects to sign-in. Every answer gets SECURITY_HEADERS."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def page(request: Request) -> Response:
            response: Response
            try:
                response = await handler(request)
            except SignInRequired as reason:
                response = sign_in_redirect(request, reason)
            except AppError as error:
                response = error_page(request, error)
            except RequestValidationError as exc:
                response = error_page(request, validation_error(exc))
            for name, value in SECURITY_HEADERS.items():
                response.headers.setdefault(name, value)
            return response

        return page
