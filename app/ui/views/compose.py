"""Compose and submit a job: one skill stage from an uploaded demonstrations file and suites."""

from __future__ import annotations

import secrets
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import ValidationError
from sqlalchemy.orm import Session

from app.auth.service import Principal
from app.db import SessionDep, commit
from app.errors import AppError
from app.jobs import service as jobs
from app.jobs.schemas import JobCreate
from app.queue import TaskNotSent
from app.registry.aliases import service as aliases
from app.suites import service as suites
from app.training.stage_config import METHODS
from app.ui.auth import JobsWriterForm, JobsWriterPage
from app.ui.pages import PageRoute, field_error, field_problems, render

router = APIRouter(route_class=PageRoute)

# The hyperparameters the form offers (StageConfig keys); blank means auto, every other key is auto.
HYPERPARAMETERS = ("max_steps", "learning_rate", "batch_size", "max_new_tokens", "lora_rank")
READINESS_PROBE = ("enforce", "warn", "off")
SUITE_CHOICES = 100
DEFAULT_BASE = "alias:production"

FormText = Annotated[str, Form(max_length=200)]
FormList = Annotated[list[str] | None, Form()]


def form_number(text: str) -> int | float | str:
    """A number typed in a form field as JSON would carry it; anything else ("auto") as text, for
    StageConfig to accept or name as invalid."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def job_body(values: dict[str, Any]) -> dict[str, Any]:
    """The POST /v1/jobs body the form describes (auto_promote is checked by the service, as for the API:
    the form offers it only to tokens with models:promote)."""
    hyperparameters: dict[str, Any] = {
        key: form_number(values[key].strip()) for key in HYPERPARAMETERS if values[key].strip()
    }
    if values["readiness_probe"]:
        hyperparameters["readiness_probe"] = values["readiness_probe"]
    stage = {
        "skill": values["skill"].strip(),
        "training_file": values["training_file"].strip(),
        "suites": values["suites"],
        "method": values["method"],
        "hyperparameters": hyperparameters,
    }
    body: dict[str, Any] = {
        "base": values["base"].strip(),
        "stages": [stage],
        "general_suites": values["general_suites"],
        "require_improvement": values["require_improvement"],
    }
    if values["auto_promote"].strip():
        body["auto_promote"] = values["auto_promote"].strip()
    return body


def _form(
    request: Request,
    session: Session,
    principal: Principal,
    values: dict[str, Any],
    error: str | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    suite_rows, _ = suites.list_suites(session, viewer=principal, after=None, limit=SUITE_CHOICES)
    return render(
        request,
        "compose.html",
        status_code=status_code,
        values=values,
        error=error,
        suites=suite_rows,
        aliases=[alias.name for alias in aliases.list_aliases(session)],
        methods=METHODS,
        hyperparameters=HYPERPARAMETERS,
        probes=READINESS_PROBE,
    )


@router.get("/ui/jobs/new")
def compose_page(
    request: Request, session: SessionDep, principal: JobsWriterPage, file: str = "", suite: str = ""
) -> HTMLResponse:
    values: dict[str, Any] = {
        "base": DEFAULT_BASE,
        "skill": "",
        "training_file": file,
        "suites": [suite] if suite else [],
        "general_suites": [],
        "method": "auto",
        "readiness_probe": "",
        "require_improvement": True,
        "auto_promote": "",
        # The same key on a double-click or a resubmitted form: one job (the API's Idempotency-Key).
        "idempotency_key": secrets.token_urlsafe(16),
        **dict.fromkeys(HYPERPARAMETERS, ""),
    }
    return _form(request, session, principal, values)


@router.post("/ui/jobs")
def submit_job(
    request: Request,
    session: SessionDep,
    principal: JobsWriterForm,
    idempotency_key: FormText,
    base: FormText = DEFAULT_BASE,
    skill: FormText = "",
    training_file: FormText = "",
    suites: FormList = None,
    general_suites: FormList = None,
    method: FormText = "auto",
    readiness_probe: FormText = "",
    require_improvement: Annotated[bool, Form()] = False,
    auto_promote: FormText = "",
    max_steps: FormText = "",
    learning_rate: FormText = "",
    batch_size: FormText = "",
    max_new_tokens: FormText = "",
    lora_rank: FormText = "",
) -> Response:
    values: dict[str, Any] = {
        "base": base,
        "skill": skill,
        "training_file": training_file,
        "suites": suites or [],
        "general_suites": general_suites or [],
        "method": method,
        "readiness_probe": readiness_probe,
        "require_improvement": require_improvement,
        "auto_promote": auto_promote,
        "idempotency_key": idempotency_key,
        "max_steps": max_steps,
        "learning_rate": learning_rate,
        "batch_size": batch_size,
        "max_new_tokens": max_new_tokens,
        "lora_rank": lora_rank,
    }
    try:
        body = JobCreate.model_validate(job_body(values))
        job, _replayed = jobs.create_job(
            session, principal=principal, body=body, idempotency_key=idempotency_key
        )
        # Committed here rather than after the view: a message the broker refused must come back as
        # this form, whose idempotency key re-sends it (create_job re-enqueues a job still validating).
        commit(session)
    except ValidationError as exc:
        return _form(request, session, principal, values, field_problems(exc.errors()), 422)
    except TaskNotSent as error:
        unsent = f"Job {job.id} was saved but not queued (the job queue is unreachable): submit again"
        return _form(request, session, principal, values, unsent + " to queue it.", error.status)
    except AppError as error:
        return _form(request, session, principal, values, field_error(error), error.status)
    return RedirectResponse(f"/ui/jobs/{job.id}", status_code=303)
