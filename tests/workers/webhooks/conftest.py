"""Webhook delivery fixtures: the API tests' real app on SQLite and PostgreSQL (tests/app/api/conftest.py),
here allowed to send webhooks to loopback receivers (tests/workers/webhooks/receiver.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from tests.app.api.conftest import (  # noqa: F401  (fixtures, shared with the API tests)
    admin,
    backend,
    base_model,
    db,
    job_body,
    model_dir,
    promoter,
    rival,
    suite,
    tokens,
    training_file,
    writer,
)
from tests.workers.webhooks.broker import broker_messages


@pytest.fixture(scope="session")
def app(backend: Settings) -> Iterator[FastAPI]:  # noqa: F811
    application = create_app(backend.model_copy(update={"webhook_allow_private_urls": True}))
    yield application
    application.state.engine.dispose()


@pytest.fixture(scope="session")
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture()
def endpoints(client: TestClient, admin: dict[str, str]) -> Iterator[list[str]]:  # noqa: F811
    """Ids of the endpoints a test subscribed, deleted after it."""
    created: list[str] = []
    yield created
    for endpoint_id in created:
        client.delete(f"/v1/webhooks/{endpoint_id}", headers=admin)


@pytest.fixture(autouse=True)
def no_waiting_tasks(request: pytest.FixtureRequest) -> None:
    """A test on the broker starts with no task waiting there: one that failed midway leaves none for
    the next to find."""
    if "backend" in request.fixturenames:
        broker_messages(request.getfixturevalue("backend"))
