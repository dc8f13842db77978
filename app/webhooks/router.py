"""Webhooks: endpoints of the caller's team, their secrets (shown once) and delivery logs."""

from __future__ import annotations

from fastapi import APIRouter

from app.auth.dependencies import CurrentPrincipal, JobsWriter
from app.db import SessionDep
from app.deps import SettingsDep
from app.pagination import DEFAULT_LIMIT, AfterQuery, LimitQuery, ListResponse, list_response
from app.webhooks import service
from app.webhooks.schemas import (
    WebhookCreate,
    WebhookCreated,
    WebhookDeleted,
    WebhookDeliveryRead,
    WebhookRead,
)

router = APIRouter(prefix="/webhooks", tags=["webhooks"])


@router.post("", status_code=201, response_model=WebhookCreated)
def create_webhook(
    body: WebhookCreate, session: SessionDep, settings: SettingsDep, principal: JobsWriter
) -> WebhookCreated:
    """Subscribe a URL to events of the caller's team (and to every alias move). Deliveries are signed
    the Standard Webhooks way with the returned `secret`, which is shown only here."""
    endpoint = service.create_endpoint(
        session, principal=principal, body=body, allow_private=settings.webhook_allow_private_urls
    )
    return WebhookCreated.of(endpoint)


@router.get("", response_model=ListResponse[WebhookRead])
def list_webhooks(
    session: SessionDep,
    principal: CurrentPrincipal,
    after: AfterQuery = None,
    limit: LimitQuery = DEFAULT_LIMIT,
) -> ListResponse[WebhookRead]:
    rows, has_more = service.list_endpoints(session, viewer=principal, after=after, limit=limit)
    return list_response(rows, has_more, WebhookRead.of)


@router.get("/{webhook_id}", response_model=WebhookRead)
def get_webhook(webhook_id: str, session: SessionDep, principal: CurrentPrincipal) -> WebhookRead:
    return WebhookRead.of(service.get_endpoint(session, webhook_id, viewer=principal))


@router.delete("/{webhook_id}", response_model=WebhookDeleted)
def delete_webhook(webhook_id: str, session: SessionDep, principal: JobsWriter) -> WebhookDeleted:
    """Delete the endpoint and its delivery log; nothing more is sent to it."""
    return WebhookDeleted(id=service.delete_endpoint(session, webhook_id, viewer=principal))


@router.get("/{webhook_id}/deliveries", response_model=ListResponse[WebhookDeliveryRead])
def list_webhook_deliveries(
    webhook_id: str,
    session: SessionDep,
    principal: CurrentPrincipal,
    after: AfterQuery = None,
    limit: LimitQuery = DEFAULT_LIMIT,
) -> ListResponse[WebhookDeliveryRead]:
    """Every event sent (or being sent) to the endpoint, newest first: attempts, the last status code
    or error, the next attempt's time, when it was delivered."""
    rows, has_more = service.deliveries_page(session, webhook_id, viewer=principal, after=after, limit=limit)
    return list_response(rows, has_more, WebhookDeliveryRead.of)
