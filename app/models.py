"""Every ORM model, imported so `Base.metadata` is complete (Alembic, relationship resolution)."""

from app.auth.models import ApiToken
from app.files.models import UploadedFile
from app.jobs.models import Job, JobEvent, JobTransition
from app.leases.models import Lease
from app.registry.models import Alias, AliasHistory, ModelVersion, Score
from app.suites.models import Suite
from app.webhooks.models import WebhookDelivery, WebhookEndpoint, WebhookEvent

__all__ = [
    "Alias",
    "AliasHistory",
    "ApiToken",
    "Job",
    "JobEvent",
    "JobTransition",
    "Lease",
    "ModelVersion",
    "Score",
    "Suite",
    "UploadedFile",
    "WebhookDelivery",
    "WebhookEndpoint",
    "WebhookEvent",
]
