"""Input rules shared by every endpoint: request bodies forbid unknown fields, and no text anywhere may
hold NUL or a lone surrogate, nor a free-form value NaN or Infinity (app/contracts/text.py says why);
each is a 4xx naming the field on both database backends."""

from __future__ import annotations

from typing import Any

from fastapi import Request, Response
from fastapi.responses import RedirectResponse
from pydantic import BaseModel, ConfigDict, model_validator

from app.contracts.text import NOT_A_NUMBER_REASON, find_unstorable
from app.errors import BadRequest, PayloadTooLarge, Unprocessable, error_response, loc_to_param

NUL = "\x00"


class RequestModel(BaseModel):
    """Base of every JSON request body: unknown fields are refused, and so are non-finite numbers
    (NaN and Infinity, which Python's JSON reader accepts)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _only_storable(cls, data: Any) -> Any:
        found = find_unstorable(data)
        if found is None:
            return data
        where, reason = found
        if reason == NOT_A_NUMBER_REASON:  # as pydantic answers NaN in a typed number field
            raise Unprocessable(f"the value {reason}", code="invalid_request", param=loc_to_param(where))
        raise BadRequest(f"the value {reason}", code="invalid_characters", param=loc_to_param(where))


def reject_nul_in_url(request: Request) -> None:
    """Router dependency: NUL in a path segment or a query parameter is a 400 naming it."""
    for name, value in request.path_params.items():
        if NUL in str(value):
            raise BadRequest("the path may not contain NUL characters", code="invalid_characters", param=name)
    for name, value in request.query_params.multi_items():
        if NUL in name or NUL in value:
            raise BadRequest(
                "query parameters may not contain NUL characters", code="invalid_characters", param=name
            )


def check_text(value: str | None, *, param: str) -> None:
    """For form fields and headers, which no model validates."""
    if value is not None and NUL in value:
        raise BadRequest("text may not contain NUL characters", code="invalid_characters", param=param)


# Multipart framing around an uploaded file (boundaries, part headers, other fields).
MULTIPART_OVERHEAD_BYTES = 64 * 1024
# JSON bodies are small (a job with 16 stages is a few kilobytes).
MAX_JSON_BODY_BYTES = 1024 * 1024
UPLOAD_PATH = "/v1/files"
# The dashboard's upload form (app.ui) posts the same files. Refused, it is sent back to the form, which
# names the field and the limit: a browser would show the API's JSON error as raw text.
UI_UPLOAD_PATH = "/ui/files"
UPLOAD_PATHS = frozenset({UPLOAD_PATH, UI_UPLOAD_PATH})
FILE_TOO_LARGE = "file_too_large"


class BodySizeLimit:
    """ASGI middleware: a request body over the limit is a 413 in the error shape (from the dashboard's
    upload form, a redirect back to the form, which says why). A declared Content-Length over the
    limit is refused before the body is read (an oversized upload is never spooled to disk); a body
    sent without one (chunked) is counted as it arrives, and the moment it passes the limit the
    application is told the client went away and its response is replaced by the refusal, so
    nothing past the limit is read or written."""

    def __init__(self, app: Any, *, max_upload_bytes: int) -> None:
        self.app = app
        self.max_upload_bytes = max_upload_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        is_upload = scope["path"] in UPLOAD_PATHS
        limit = self.max_upload_bytes + MULTIPART_OVERHEAD_BYTES if is_upload else MAX_JSON_BODY_BYTES
        error = PayloadTooLarge(
            f"the request body is larger than the {limit}-byte limit",
            code=FILE_TOO_LARGE if is_upload else "body_too_large",
            param="file" if is_upload else None,
        )
        refusal: Response = error_response(error)
        if scope["path"] == UI_UPLOAD_PATH:
            refusal = RedirectResponse(f"{UI_UPLOAD_PATH}?error={FILE_TOO_LARGE}", status_code=303)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await refusal(scope, receive, send)
            return
        received = 0
        too_large = False
        responded = False

        async def counting_receive() -> Any:
            nonlocal received, too_large
            if too_large:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    too_large = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Any) -> None:
            nonlocal responded
            if too_large:
                if not responded:
                    responded = True
                    await refusal(scope, receive, send)
                return  # the application's own answer to a cut-off body is dropped
            responded = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not too_large:
                raise
        if too_large and not responded:
            await refusal(scope, receive, send)
