"""Versions: description and tags edited with models:promote (PATCH), and the list filtered by skill,
status, alias and tag (every filter given must hold)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.db import session_scope
from app.registry import service as registry

from .conftest import unique
from .test_api_files import assert_error


def trained_version(
    client: TestClient,
    db: sessionmaker[Session],
    writer: dict[str, str],
    job_body: dict[str, Any],
    skill: str,
) -> str:
    job = client.post("/v1/jobs", json=job_body, headers=writer)
    assert job.status_code == 201, job.text
    with session_scope(db) as session:
        version = registry.register_version(
            session,
            parent_id=job_body["base"],
            job_id=job.json()["id"],
            skill=skill,
            checkpoint_uri="file:///nonexistent/checkpoint",
            checkpoint_sha256="0" * 64,
        )
        return version.id


def listed(client: TestClient, headers: dict[str, str], **filters: str) -> list[str]:
    response = client.get("/v1/models", params={**filters, "limit": 100}, headers=headers)
    assert response.status_code == 200, response.text
    return [v["id"] for v in response.json()["data"]]


def test_description_and_tags_are_edited_with_models_promote(
    client: TestClient,
    db: sessionmaker[Session],
    writer: dict[str, str],
    promoter: dict[str, str],
    reader: dict[str, str],
    job_body: dict[str, Any],
) -> None:
    version_id = trained_version(client, db, writer, job_body, unique("skill"))
    assert client.get(f"/v1/models/{version_id}", headers=reader).json()["tags"] == []
    url = f"/v1/models/{version_id}"
    edited = client.patch(url, json={"description": "reviewed", "tags": ["q3", "ok", "q3"]}, headers=promoter)
    assert edited.status_code == 200, edited.text
    assert edited.json()["description"] == "reviewed" and edited.json()["tags"] == ["q3", "ok"]
    assert "aliases" in edited.json()
    # Left out: unchanged; null description: cleared; [] tags: cleared.
    assert client.patch(url, json={"tags": ["ok"]}, headers=promoter).json()["description"] == "reviewed"
    cleared = client.patch(url, json={"description": None}, headers=promoter).json()
    assert cleared["description"] is None and cleared["tags"] == ["ok"]
    assert client.patch(url, json={"tags": []}, headers=promoter).json()["tags"] == []
    unchanged = client.patch(url, json={}, headers=promoter)
    assert unchanged.status_code == 200 and unchanged.json()["tags"] == []

    assert_error(client.patch(url, json={"tags": ["x"]}, headers=writer), 403, "insufficient_scope", None)
    assert_error(client.patch(url, json={"tags": ["x"]}, headers=reader), 403, "insufficient_scope", None)
    assert_error(client.patch("/v1/models/mv_nope", json={}, headers=promoter), 404, "model_not_found", "id")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tags": ["Has Space"]}, "tags[0]"),
        ({"tags": ["x" * 33]}, "tags[0]"),
        ({"tags": [f"t{i}" for i in range(17)]}, "tags"),
        ({"tags": "one"}, "tags"),
        ({"description": "d" * 2001}, "description"),
        ({"name": "renamed"}, "name"),
    ],
)
def test_bad_edits_are_422_and_change_nothing(
    client: TestClient,
    promoter: dict[str, str],
    base_model: dict[str, Any],
    counts: Callable[[], dict[str, int]],
    body: dict[str, Any],
    param: str,
) -> None:
    before_version = client.get(f"/v1/models/{base_model['id']}", headers=promoter).json()
    before = counts()
    response = client.patch(f"/v1/models/{base_model['id']}", json=body, headers=promoter)
    assert_error(response, 422, "invalid_request", param)
    assert counts() == before
    assert client.get(f"/v1/models/{base_model['id']}", headers=promoter).json() == before_version


def test_versions_are_filtered_by_skill_status_alias_and_tag(
    client: TestClient,
    db: sessionmaker[Session],
    writer: dict[str, str],
    promoter: dict[str, str],
    reader: dict[str, str],
    job_body: dict[str, Any],
    base_model: dict[str, Any],
) -> None:
    skill = unique("filtered")
    first = trained_version(client, db, writer, job_body, skill)
    second = trained_version(client, db, writer, job_body, skill)
    other = trained_version(client, db, writer, job_body, unique("other"))
    tag = unique("tag")
    client.patch(f"/v1/models/{first}", json={"tags": [tag, "shared"]}, headers=promoter)
    client.patch(f"/v1/models/{other}", json={"tags": [tag]}, headers=promoter)
    # A tag that contains another as a substring must not match it.
    client.patch(f"/v1/models/{second}", json={"tags": [f"{tag}x"]}, headers=promoter)

    assert listed(client, reader, skill=skill) == [second, first]
    assert listed(client, reader, tag=tag) == [other, first]
    assert listed(client, reader, tag=tag, skill=skill) == [first]
    assert listed(client, reader, skill=skill, status="candidate") == [second, first]
    assert listed(client, reader, skill=skill, status="accepted") == []
    assert base_model["id"] in listed(client, reader, status="accepted")

    alias = unique("filter-alias")
    moved = client.put(f"/v1/aliases/{alias}", json={"version": base_model["id"]}, headers=promoter)
    assert moved.status_code == 200, moved.text
    assert listed(client, reader, alias=alias) == [base_model["id"]]
    assert listed(client, reader, alias=unique("no-such-alias")) == []
    assert listed(client, reader, alias=alias, skill=skill) == []

    for name, value in (("tag", "Bad Tag"), ("skill", "Bad Skill"), ("alias", "Bad Alias")):
        response = client.get("/v1/models", params={name: value}, headers=reader)
        assert_error(response, 422, "invalid_request", name)
