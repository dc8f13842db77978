"""Dashboard test fixtures: the API tests' real app on SQLite and PostgreSQL (tests/app/api/conftest.py),
and a client that behaves like a browser: it keeps the session cookie and posts forms with the page's
CSRF token."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.app.api.conftest import (  # noqa: F401  (fixtures, shared with the API tests)
    Tokens,
    admin,
    app,
    backend,
    base_model,
    client,
    counts,
    db,
    job_body,
    live_server,
    model_dir,
    promoter,
    reader,
    rival,
    suite,
    tokens,
    training_file,
    writer,
)

CSRF_INPUT = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(html: str) -> str:
    match = CSRF_INPUT.search(html)
    assert match is not None, "the page has no CSRF field"
    return match.group(1)


class Dashboard:
    """One browser's view of the dashboard (redirects are not followed, so tests see them)."""

    def __init__(self, application: FastAPI) -> None:
        self.http = TestClient(application, follow_redirects=False)

    def sign_in(self, token: str) -> httpx.Response:
        form = self.http.get("/ui/sign-in")
        assert form.status_code == 200, form.text
        return self.http.post(
            "/ui/sign-in", data={"token": token, "next": "/ui/jobs", "csrf_token": csrf_of(form.text)}
        )

    def get(self, path: str, **params: Any) -> httpx.Response:
        return self.http.get(path, params=params or None)  # an empty dict would drop the query

    def post(self, path: str, data: dict[str, Any] | None = None, **kwargs: Any) -> httpx.Response:
        """A form post carrying the CSRF token of this session (read from a page, as a browser would)."""
        csrf = csrf_of(self.get("/ui/jobs").text)
        return self.http.post(path, data={"csrf_token": csrf, **(data or {})}, **kwargs)


@pytest.fixture()
def dashboard(app: FastAPI) -> Iterator[Callable[[str], Dashboard]]:  # noqa: F811
    opened: list[Dashboard] = []

    def signed_in(token: str) -> Dashboard:
        browser = Dashboard(app)
        opened.append(browser)
        response = browser.sign_in(token)
        assert response.status_code == 303, response.text
        return browser

    yield signed_in
    for browser in opened:
        browser.http.close()


@pytest.fixture()
def anonymous(app: FastAPI) -> Iterator[Dashboard]:  # noqa: F811
    browser = Dashboard(app)
    yield browser
    browser.http.close()
