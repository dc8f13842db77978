"""Teams and tokens: another team's files, suites and jobs answer 404 as if they did not exist, admins
see everything, the registry is shared; tokens are created, listed by prefix and revoked by admins,
and a revoked token is refused at its next request; auto_promote needs models:promote."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from tests.app.api.conftest import make_suite, suite_lines, upload


def _job(client: TestClient, headers: dict[str, str], body: dict[str, Any]) -> Any:
    return client.post("/v1/jobs", json=body, headers=headers)


def test_another_teams_objects_do_not_exist_for_you(
    client: TestClient,
    writer: dict[str, str],
    rival: dict[str, str],
    admin: dict[str, str],
    job_body: dict[str, Any],
    training_file: str,
    suite: dict[str, Any],
    counts: Any,
) -> None:
    created = _job(client, writer, job_body)
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]
    for path in (
        f"/v1/files/{training_file}",
        f"/v1/suites/{suite['id']}",
        f"/v1/jobs/{job_id}",
        f"/v1/jobs/{job_id}/events",
    ):
        mine = client.get(path, headers=writer)
        theirs = client.get(path, headers=rival)
        assert mine.status_code == 200, path
        assert theirs.status_code == 404, path
        assert theirs.json()["error"]["type"] == "not_found_error"
        assert client.get(path, headers=admin).status_code == 200, f"admins see every team's {path}"
    listed = client.get("/v1/jobs", headers=rival).json()["data"]
    assert job_id not in {job["id"] for job in listed}
    assert suite["id"] not in {s["id"] for s in client.get("/v1/suites", headers=rival).json()["data"]}
    before = counts()
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=rival).status_code == 404
    # A job of the rival team cannot train on our file or be gated on our suite: 404, naming the field.
    stolen = _job(client, rival, job_body)
    assert stolen.status_code == 404 and stolen.json()["error"]["param"] == "stages[0].training_file"
    assert counts() == before
    assert client.get(f"/v1/jobs/{job_id}", headers=writer).json()["status"] == "validating"


def test_suite_names_stay_unique_without_revealing_the_other_team(
    client: TestClient, writer: dict[str, str], rival: dict[str, str]
) -> None:
    ours = make_suite(client, writer)
    uploaded = upload(client, rival, suite_lines(), "regression_suite").json()
    clash = client.post("/v1/suites", json={"name": ours["name"], "file": uploaded["id"]}, headers=rival)
    assert clash.status_code == 409 and ours["id"] not in clash.json()["error"]["message"]


def test_the_registry_is_shared_but_server_paths_are_for_admins(
    client: TestClient, rival: dict[str, str], admin: dict[str, str], base_model: dict[str, Any]
) -> None:
    theirs = client.get(f"/v1/models/{base_model['id']}", headers=rival)
    assert theirs.status_code == 200 and theirs.json()["checkpoint_uri"] is None
    assert client.get(f"/v1/models/{base_model['id']}", headers=admin).json()["checkpoint_uri"]


def test_admins_create_list_and_revoke_tokens(
    client: TestClient, admin: dict[str, str], writer: dict[str, str]
) -> None:
    created = client.post(
        "/v1/tokens", json={"name": "ci", "team": "ml-infra", "scopes": ["jobs:write"]}, headers=admin
    )
    assert created.status_code == 201, created.text
    token = created.json()
    assert token["token"].startswith(token["prefix"]) and token["team"] == "ml-infra"
    headers = {"Authorization": f"Bearer {token['token']}"}
    assert client.get("/v1/jobs", headers=headers).status_code == 200
    listed = client.get("/v1/tokens", headers=admin).json()["data"]
    row = next(t for t in listed if t["id"] == token["id"])
    assert "token" not in row and row["prefix"] == token["prefix"] and row["revoked_at"] is None
    assert client.get("/v1/tokens", headers=writer).status_code == 403
    assert client.post("/v1/tokens", json={"name": "x"}, headers=writer).status_code == 403
    revoked = client.delete(f"/v1/tokens/{token['id']}", headers=admin)
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    refused = client.get("/v1/jobs", headers=headers)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_token"
    assert client.delete("/v1/tokens/tok_nope", headers=admin).status_code == 404
    bad = client.post("/v1/tokens", json={"name": "x", "team": "Bad Team!"}, headers=admin)
    assert bad.status_code == 422 and bad.json()["error"]["param"] == "team"


def test_auto_promote_needs_the_promote_scope_and_records_the_alias_version(
    client: TestClient,
    writer: dict[str, str],
    admin: dict[str, str],
    job_body: dict[str, Any],
    base_model: dict[str, Any],
    counts: Any,
) -> None:
    before = counts()
    refused = _job(client, writer, {**job_body, "auto_promote": "production"})
    assert refused.status_code == 403 and refused.json()["error"]["param"] == "auto_promote"
    assert counts() == before
    client.put("/v1/aliases/teams-test", json={"version": base_model["id"]}, headers=admin)
    created = _job(client, admin, {**job_body, "auto_promote": "teams-test"})
    assert created.status_code == 201, created.text
    with_db = created.json()
    assert with_db["auto_promote"] == "teams-test"
