"""One error shape everywhere: ``{"error": {"type", "code", "message", "param"}}`` with the HTTP status.

Domain code raises an `AppError` subclass; the handlers here render it, FastAPI's request validation,
Starlette's 404/405 and anything unexpected (500, logged, never a stack trace to the client).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from sqlalchemy.exc import DataError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.contracts.text import field_path

log = logging.getLogger(__name__)


class AppError(Exception):
    status: int = 400
    type: str = "invalid_request_error"

    def __init__(
        self,
        message: str,
        *,
        code: str,
        param: str | None = None,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param
        self.details = details or {}
        self.headers = headers

    def body(self) -> dict[str, Any]:
        error = {"type": self.type, "code": self.code, "message": self.message, "param": self.param}
        return {"error": {**error, **self.details}}

    def __reduce__(self) -> tuple[Any, ...]:
        # Picklable whatever a subclass's __init__ takes: an error a Celery task raises crosses from the
        # pool process to the worker's main process pickled, and one that cannot be rebuilt there
        # (keyword-only `code`) stops the whole worker.
        return (_rebuild_error, (type(self), self.args, self.__dict__))


def _rebuild_error(cls: type[AppError], args: tuple[Any, ...], state: dict[str, Any]) -> AppError:
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    error.__dict__.update(state)
    return error


class BadRequest(AppError):
    status = 400


class Unauthorized(AppError):
    status = 401
    type = "authentication_error"


class Forbidden(AppError):
    status = 403
    type = "permission_error"


class NotFound(AppError):
    status = 404
    type = "not_found_error"


class Conflict(AppError):
    status = 409
    type = "conflict_error"


class PayloadTooLarge(AppError):
    status = 413


class Unprocessable(AppError):
    status = 422


class ServiceUnavailable(AppError):
    status = 503
    type = "server_error"


class InternalError(AppError):
    """A known server-side fault worth naming (stored bytes gone); retrying will not help."""

    status = 500
    type = "server_error"


# Seconds a client should wait before retrying a request refused because the API is saturated.
BUSY_RETRY_AFTER_SECONDS = 1


def busy_error(message: str) -> ServiceUnavailable:
    """The API is up but saturated: 503 + Retry-After. The request changed nothing; retry it as is."""
    return ServiceUnavailable(
        f"{message}; retry after {BUSY_RETRY_AFTER_SECONDS} s (with the same Idempotency-Key)",
        code="busy",
        headers={"Retry-After": str(BUSY_RETRY_AFTER_SECONDS)},
    )


def error_response(error: AppError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def loc_to_param(loc: Sequence[str | int]) -> str | None:
    """("body", "stages", 0, "hyperparameters") -> "stages[0].hyperparameters"."""
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header", "cookie"):
        parts = parts[1:]
    return field_path(parts) or None


def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    if any(e.get("type") == "json_invalid" for e in errors):
        return error_response(BadRequest("the request body is not valid JSON", code="invalid_json"))
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    param = loc_to_param(first.get("loc", ()))
    messages = []
    for err in errors[:5]:
        where = loc_to_param(err.get("loc", ()))
        msg = "unknown field" if err.get("type") == "extra_forbidden" else str(err.get("msg"))
        messages.append(f"{where}: {msg}" if where else msg)
    return error_response(Unprocessable("; ".join(messages), code="invalid_request", param=param))


# FastAPI's answer to a body its JSON reader cannot even decode (not UTF-8, an integer past Python's
# digit limit); a JSONDecodeError comes as a validation error instead.
_BODY_PARSE_ERROR = "There was an error parsing the body"


def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400 and exc.detail == _BODY_PARSE_ERROR:
        return error_response(
            BadRequest(
                "the request body is not valid JSON (not UTF-8, or a number too long)", code="invalid_json"
            )
        )
    codes = {404: ("not_found_error", "not_found"), 405: ("invalid_request_error", "method_not_allowed")}
    error_type, code = codes.get(exc.status_code, ("invalid_request_error", f"http_{exc.status_code}"))
    body = {"error": {"type": error_type, "code": code, "message": str(exc.detail), "param": None}}
    return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))


def _app_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AppError)
    return error_response(exc)


def _database_down(request: Request, exc: Exception) -> JSONResponse:
    if "database is locked" in str(exc):  # SQLite's writer lock stayed busy for the whole busy_timeout
        log.warning("database busy on %s %s: %s", request.method, request.url.path, exc)
        return error_response(busy_error("the database is busy"))
    log.error("database error on %s %s: %s", request.method, request.url.path, exc)
    return error_response(ServiceUnavailable("the database is unavailable", code="database_unavailable"))


def _pool_exhausted(request: Request, exc: Exception) -> JSONResponse:
    log.warning("no database connection for %s %s: %s", request.method, request.url.path, exc)
    return error_response(busy_error("no database connection was free"))


def _unstorable_value(request: Request, exc: Exception) -> JSONResponse:
    # Input rules (app.inputs) should catch these first; this keeps a missed case a 400, not a 500.
    log.warning("database refused a value on %s %s: %s", request.method, request.url.path, exc)
    return error_response(
        BadRequest("a value cannot be stored (invalid characters or range)", code="invalid_value")
    )


def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    body = {
        "error": {
            "type": "server_error",
            "code": "internal_error",
            "message": "internal error",
            "param": None,
        }
    }
    return JSONResponse(body, status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(AppError, _app_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(OperationalError, _database_down)
    app.add_exception_handler(PoolTimeout, _pool_exhausted)
    app.add_exception_handler(DataError, _unstorable_value)
    app.add_exception_handler(Exception, _unexpected)


# The OpenAPI description of the error body, for `responses=` on routes.
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "type": {"type": "string"},
                "code": {"type": "string"},
                "message": {"type": "string"},
                "param": {"type": ["string", "null"]},
            },
            "required": ["type", "code", "message", "param"],
        }
    },
    "required": ["error"],
}


class ErrorDetail(BaseModel):
    """`param` names the offending field (`stages[0].training_file`) or header; some errors add
    details (a file's pre-flight `report`, a suite's `problems`, readiness `checks`)."""

    model_config = ConfigDict(extra="allow")

    type: str
    code: str
    message: str
    param: str | None


class ErrorResponse(BaseModel):
    """Every 4xx and 5xx answer."""

    error: ErrorDetail


# `responses=` for routers: each error status documented once, as a reference to ErrorResponse.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        400: "malformed request",
        401: "missing or invalid token",
        403: "token lacks the scope",
        404: "unknown resource",
        409: "conflict (idempotency, compare-and-set, state, in use)",
        413: "upload too large",
        422: "invalid input",
        500: "internal error (logged; never a stack trace)",
        503: "busy or a dependency is down (Retry-After when busy)",
    }.items()
}
