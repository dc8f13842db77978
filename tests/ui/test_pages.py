"""The dashboard over HTTP against the real app on SQLite and PostgreSQL: sign-in and its cookie,
CSRF on every POST, scopes as the API checks them, revoked tokens, teams, and what each page shows."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from typing import Any

import httpx
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

from app.auth.service import create_token
from app.db import READ_ONLY_OPTION, session_scope
from app.evaluation.gate import GateOptions, SuiteComparison, evaluate_gate
from app.inputs import MULTIPART_OVERHEAD_BYTES
from app.jobs import service as jobs
from app.jobs.states import JobStatus
from app.registry import service as registry
from app.settings import Settings
from app.ui.session import SESSION_COOKIE
from tests.app.api.conftest import Tokens, demonstration_lines, make_suite, unique
from tests.ui.conftest import Dashboard, csrf_of

Browser = Callable[[str], Dashboard]


def assert_error_page(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert 'class="error-page"' in response.text and code in response.text


def test_pages_need_a_session_and_come_back_after_sign_in(anonymous: Dashboard, tokens: Tokens) -> None:
    away = anonymous.get("/ui/models")
    assert away.status_code == 303 and away.headers["location"] == "/ui/sign-in?next=/ui/models"
    form = anonymous.get("/ui/sign-in", next="/ui/models")
    cookie = form.headers["set-cookie"]
    for attribute in ("HttpOnly", "SameSite=strict", "Path=/ui"):
        assert attribute.lower() in cookie.lower(), cookie
    signed_in = anonymous.http.post(
        "/ui/sign-in", data={"token": tokens.reader, "next": "/ui/models", "csrf_token": csrf_of(form.text)}
    )
    assert signed_in.status_code == 303 and signed_in.headers["location"] == "/ui/models"
    sealed = anonymous.http.cookies[SESSION_COOKIE]
    assert tokens.reader not in sealed and tokens.reader[5:20] not in sealed
    page = anonymous.get("/ui/models")
    assert page.status_code == 200 and "test-reader" in page.text
    for header in ("content-security-policy", "x-frame-options"):
        assert header in page.headers
    assert page.headers["cache-control"] == "no-store"


def test_sign_in_refuses_a_wrong_token_and_a_form_without_its_csrf_token(
    anonymous: Dashboard, tokens: Tokens
) -> None:
    form = anonymous.get("/ui/sign-in")
    wrong = anonymous.http.post("/ui/sign-in", data={"token": "sdft_nope", "csrf_token": csrf_of(form.text)})
    assert wrong.status_code == 401 and "not a valid token" in wrong.text
    assert SESSION_COOKIE not in wrong.headers.get("set-cookie", "")
    forged = anonymous.http.post("/ui/sign-in", data={"token": tokens.admin, "csrf_token": "0" * 64})
    assert_error_page(forged, 403, "csrf_failed")
    assert anonymous.get("/ui/jobs").status_code == 303, "still signed out"


def test_every_post_needs_this_sessions_csrf_token(
    dashboard: Browser, tokens: Tokens, client: TestClient, writer: dict[str, str], job_body: dict[str, Any]
) -> None:
    job_id = client.post("/v1/jobs", json=job_body, headers=writer).json()["id"]
    mine, other = dashboard(tokens.writer), dashboard(tokens.writer)
    cancel = f"/ui/jobs/{job_id}/cancel"
    assert_error_page(mine.http.post(cancel), 403, "csrf_failed")
    their_token = csrf_of(other.get("/ui/jobs").text)
    assert_error_page(mine.http.post(cancel, data={"csrf_token": their_token}), 403, "csrf_failed")
    assert client.get(f"/v1/jobs/{job_id}", headers=writer).json()["status"] == "validating"
    done = mine.post(cancel)
    assert done.status_code == 303 and done.headers["location"] == f"/ui/jobs/{job_id}?notice=cancelled"
    assert client.get(f"/v1/jobs/{job_id}", headers=writer).json()["status"] == "cancelled"


def test_a_read_only_token_sees_no_write_controls_and_its_posts_are_refused(
    dashboard: Browser,
    tokens: Tokens,
    client: TestClient,
    writer: dict[str, str],
    job_body: dict[str, Any],
    base_model: dict[str, Any],
    counts: Callable[[], dict[str, int]],
) -> None:
    job_id = client.post("/v1/jobs", json=job_body, headers=writer).json()["id"]
    reader = dashboard(tokens.reader)
    for path in ("/ui/jobs", f"/ui/jobs/{job_id}", "/ui/suites", f"/ui/models/{base_model['id']}"):
        page = reader.get(path)
        assert page.status_code == 200, path
        # The sign-out form is the only form that posts.
        assert page.text.count('method="post"') == 1, path
        assert "New job" not in page.text and "Upload" not in page.text
    for path in ("/ui/files", "/ui/jobs/new", "/ui/admin/tokens"):
        assert_error_page(reader.get(path), 403, "insufficient_scope")
    before = counts()
    for path, data in (
        (f"/ui/jobs/{job_id}/cancel", {}),
        ("/ui/promote", {"alias": unique("a"), "version": base_model["id"], "expected_version": ""}),
        ("/ui/suites", {"name": unique("s"), "file": "file_x"}),
        ("/ui/admin/tokens", {"name": "sneaky", "team": "default", "scopes": "admin"}),
    ):
        assert_error_page(reader.post(path, data), 403, "insufficient_scope")
    assert counts() == before


def test_a_revoked_token_is_signed_out_at_its_next_request(
    dashboard: Browser, db: sessionmaker[Session], client: TestClient, admin: dict[str, str]
) -> None:
    with session_scope(db) as session:
        token, secret = create_token(session, name=unique("soon-revoked"), scopes=[])
    browser = dashboard(secret)
    assert browser.get("/ui/jobs").status_code == 200
    assert client.delete(f"/v1/tokens/{token.id}", headers=admin).status_code == 200
    away = browser.get("/ui/jobs")
    assert away.status_code == 303 and away.headers["location"].startswith("/ui/sign-in?notice=revoked")
    assert SESSION_COOKIE not in browser.http.cookies, "the dead session cookie is cleared"
    assert "no longer valid" in browser.get("/ui/sign-in", notice="revoked").text


def test_sign_out_ends_the_session(dashboard: Browser, tokens: Tokens) -> None:
    browser = dashboard(tokens.reader)
    out = browser.post("/ui/sign-out")
    assert out.status_code == 303 and out.headers["location"] == "/ui/sign-in?notice=signed-out"
    assert browser.get("/ui/jobs").status_code == 303


def test_a_cookie_copied_before_sign_out_no_longer_opens_a_session(
    dashboard: Browser, tokens: Tokens, app: FastAPI
) -> None:
    # Sign-out used only to ask the browser to drop its cookie: a copy taken before still opened a
    # signed-in session for up to 12 h. Signing out now ends every session of that token.
    browser, other = dashboard(tokens.writer), dashboard(tokens.writer)
    copied = browser.http.cookies[SESSION_COOKIE]
    assert browser.post("/ui/sign-out").status_code == 303
    replay = TestClient(app, follow_redirects=False)
    replay.cookies.set(SESSION_COOKIE, copied, path="/ui")
    refused = replay.get("/ui/jobs")
    assert refused.status_code == 303 and "notice=signed-out" in refused.headers["location"]
    assert other.get("/ui/jobs").status_code == 303, "the token's other sessions end too"
    assert dashboard(tokens.writer).get("/ui/jobs").status_code == 200, "signing in again works at once"
    replay.close()


def test_another_teams_job_is_not_found(
    dashboard: Browser, tokens: Tokens, client: TestClient, writer: dict[str, str], job_body: dict[str, Any]
) -> None:
    job_id = client.post("/v1/jobs", json=job_body, headers=writer).json()["id"]
    rival = dashboard(tokens.rival)
    assert_error_page(rival.get(f"/ui/jobs/{job_id}"), 404, "job_not_found")
    assert job_id not in rival.get("/ui/jobs").text
    assert_error_page(rival.get("/ui/jobs/progress", ids=job_id), 404, "job_not_found")
    assert job_id in dashboard(tokens.admin).get("/ui/jobs").text, "admins see every team's jobs"


def test_upload_shows_the_preflight_report_with_row_errors_inline(
    dashboard: Browser, tokens: Tokens, counts: Callable[[], dict[str, int]], base_model: dict[str, Any]
) -> None:
    browser = dashboard(tokens.writer)
    bad = demonstration_lines(3) + '{"prompt": "no demonstration"}\nnot json\n'
    before = counts()
    refused = browser.post(
        "/ui/files",
        {"purpose": "demonstrations", "model": base_model["id"]},
        files={"file": ("bad.jsonl", bad.encode(), "application/jsonl")},
    )
    assert refused.status_code == 422
    assert 'id="upload-error"' in refused.text and "Not stored" in refused.text
    assert '<td class="num">4</td>' in refused.text and '<td class="num">5</td>' in refused.text
    assert counts() == before
    stored = browser.post(
        "/ui/files",
        {"purpose": "demonstrations", "model": base_model["id"]},
        files={"file": ("good.jsonl", demonstration_lines(3).encode(), "application/jsonl")},
    )
    assert stored.status_code == 303
    page = browser.get(stored.headers["location"])
    assert "Valid:" in page.text and "3 row(s)" in page.text and "Train a skill on this file" in page.text


def test_a_suite_is_created_from_an_uploaded_file_and_a_job_submitted(
    dashboard: Browser, tokens: Tokens, base_model: dict[str, Any], training_file: str
) -> None:
    browser = dashboard(tokens.writer)
    upload = browser.post(
        "/ui/files",
        {"purpose": "regression_suite", "grader": "exact_match"},
        files={"file": ("suite.jsonl", b'{"prompt": "1+1", "reference": "2"}\n', "application/jsonl")},
    )
    file_id = upload.headers["location"].rsplit("/", 1)[1]
    name = unique("ui-suite")
    created = browser.post("/ui/suites", {"name": name, "file": file_id, "tolerance": "5"})
    assert created.status_code == 303, created.text
    suites_page = browser.get("/ui/suites")
    assert name in suites_page.text
    suite_id = next(line for line in suites_page.text.splitlines() if name in line).split('id="')[1][:40]
    suite_id = suite_id.split('"')[0]
    form = browser.get("/ui/jobs/new", file=training_file)
    key = form.text.split('name="idempotency_key" value="')[1].split('"')[0]
    body = {
        "idempotency_key": key,
        "base": base_model["id"],
        "skill": "arithmetic",
        "training_file": training_file,
        "suites": suite_id,
        "method": "sft",
        "max_steps": "3",
        "learning_rate": "0.001",
        "require_improvement": "true",
    }
    submitted = browser.post("/ui/jobs", body)
    assert submitted.status_code == 303, submitted.text
    job_page = browser.get(submitted.headers["location"])
    assert "Stage 1: arithmetic" in job_page.text and name in job_page.text
    again = browser.post("/ui/jobs", body)
    assert again.headers["location"] == submitted.headers["location"], "the same form is the same job"
    invalid = browser.post("/ui/jobs", {**body, "idempotency_key": key + "x", "max_steps": "-1"})
    assert invalid.status_code == 422 and "max_steps" in invalid.text and 'id="form-error"' in invalid.text
    promoting = browser.post("/ui/jobs", {**body, "idempotency_key": key + "y", "auto_promote": "production"})
    assert promoting.status_code == 403 and "needs the models:promote scope" in promoting.text


def _trained_version(
    db: sessionmaker[Session], job_id: str, base: dict[str, Any], suite: dict[str, Any]
) -> str:
    """What a worker records for a finished stage (events, a gated version, a score), written through
    the same services the workers call."""
    comparison = SuiteComparison(
        suite_name=suite["name"],
        suite_sha256=suite["sha256"],
        role="new_skill",
        tolerance=2.0,
        min_score=None,
        decoding={},
        parent_results={"q0": 0.0, "q1": 0.0, "q2": 0.0},
        candidate_results={"q0": 1.0, "q1": 1.0, "q2": 0.0},
    )
    report = evaluate_gate(
        [comparison],
        parent_checkpoint_sha256=base["checkpoint_sha256"],
        candidate_checkpoint_sha256="c" * 64,
        options=GateOptions(require_improvement=False),
    )
    with session_scope(db) as session:
        probe = {
            "ready": False,
            "message": "the teacher is not clearly better",
            "n": 4,
            "teacher_rate": 0.25,
            "student_rate": 0.25,
            "student_sample_rate": None,
        }
        choice = {"method": "sft_retain", "reason": "sft_retain: the teacher is not clearly better"}
        jobs.append_event(session, job_id=job_id, level="info", type="probe", message="probe", data=probe)
        jobs.append_event(session, job_id=job_id, level="info", type="method", message="auto", data=choice)
        for step in (1, 2, 3):
            data = {
                "stage": 0,
                "skill": "arithmetic",
                "step": step,
                "total_steps": 3,
                "loss": 3.0 / step,
                "probe_divergence": 1.0 / step,
                "probe_score": 0.1 * step,
                "rollout_tokens_mean": 8.0,
            }
            jobs.append_event(session, job_id=job_id, level="info", type="metrics", message="step", data=data)
        version = registry.register_version(
            session,
            parent_id=base["id"],
            job_id=job_id,
            skill="arithmetic",
            checkpoint_uri="file:///nowhere",
            checkpoint_sha256="c" * 64,
            training={
                "method": "sft_retain",
                "choice": choice,
                "config": {"max_steps": 3},
                "steps": 3,
                "diagnostics": None,
            },
        )
        registry.decide_version(
            session,
            version_id=version.id,
            status=registry.VersionStatus.ACCEPTED,
            gate_report=report.to_dict(),
        )
        registry.record_score(
            session,
            model_version_id=version.id,
            suite_sha256=suite["sha256"],
            decoding_hash="d" * 64,
            score=66.7,
            n=3,
            per_item=[],
            ci_low=33.3,
            ci_high=100.0,
            suite_id=suite["id"],
        )
        gate = report.to_dict()
        jobs.append_event(session, job_id=job_id, level="info", type="gate", message="accepted", data=gate)
        jobs.update_progress(
            session, job_id, expected_status=JobStatus.VALIDATING, candidate_version_ids=[version.id]
        )
        return version.id


def test_job_model_and_alias_pages_show_what_the_workers_recorded(
    dashboard: Browser,
    tokens: Tokens,
    client: TestClient,
    writer: dict[str, str],
    db: sessionmaker[Session],
    job_body: dict[str, Any],
    base_model: dict[str, Any],
    suite: dict[str, Any],
) -> None:
    job_id = client.post("/v1/jobs", json=job_body, headers=writer).json()["id"]
    version_id = _trained_version(db, job_id, base_model, suite)
    browser = dashboard(tokens.admin)
    job = browser.get(f"/ui/jobs/{job_id}").text
    assert "Readiness probe: the teacher cannot teach this skill." in job
    assert "Method choice:</strong> sft_retain: the teacher is not clearly better" in job
    assert job.count("<polyline") == 4, "one line in each of the four metric charts"
    assert "Accepted:</strong>" in job and f"<td>{suite['name']}</td><td>new_skill</td>" in job
    chart = browser.get(f"/ui/jobs/{job_id}/chart")
    assert chart.status_code == 200 and chart.text.count("<polyline") == 4 and "<html" not in chart.text
    models = browser.get("/ui/models").text
    assert f'data-version="{version_id}"' in models and f'data-version="{base_model["id"]}"' in models
    version = browser.get(f"/ui/models/{version_id}").text
    assert "sft_retain</strong>, chosen by method auto: the teacher is not clearly better" in version
    assert 'id="heatmap"' in version and "66.7 points, interval [33.3, 100.0]" in version
    alias = unique("ui-alias")
    confirm = browser.get("/ui/promote", alias=alias, version=version_id)
    assert confirm.status_code == 200 and "Accepted:</strong>" in confirm.text
    assert 'name="expected_version" value=""' in confirm.text, "the alias does not exist yet"
    moved = browser.post("/ui/promote", {"alias": alias, "version": version_id, "expected_version": ""})
    assert moved.status_code == 303 and moved.headers["location"] == f"/ui/aliases/{alias}?notice=promoted"
    page = browser.get(moved.headers["location"]).text
    assert "The alias was moved." in page and "test-admin" in page
    assert alias in browser.get("/ui/aliases").text


def test_a_stale_confirmation_page_changes_nothing_and_says_someone_moved_it(
    dashboard: Browser, tokens: Tokens, client: TestClient, admin: dict[str, str], base_model: dict[str, Any]
) -> None:
    alias = unique("contested")
    browser = dashboard(tokens.promoter)
    confirm = browser.get("/ui/promote", alias=alias, version=base_model["id"])
    assert 'name="expected_version" value=""' in confirm.text
    # Someone else creates the alias between the page and the click.
    put = client.put(f"/v1/aliases/{alias}", json={"version": base_model["id"]}, headers=admin)
    assert put.status_code == 200
    stale = browser.post("/ui/promote", {"alias": alias, "version": base_model["id"], "expected_version": ""})
    assert stale.status_code == 409 and "Someone moved" in stale.text and 'id="reload"' in stale.text
    history = client.get(f"/v1/aliases/{alias}/history", headers=admin).json()["data"]
    assert len(history) == 1, "the stale click moved nothing"
    nothing = browser.get(f"/ui/aliases/{alias}/rollback")
    assert "no earlier version to roll back to" in nothing.text and 'id="confirm-form"' not in nothing.text


def test_forcing_a_rejected_version_needs_a_reason(
    dashboard: Browser,
    tokens: Tokens,
    db: sessionmaker[Session],
    client: TestClient,
    writer: dict[str, str],
    job_body: dict[str, Any],
    base_model: dict[str, Any],
) -> None:
    job_id = client.post("/v1/jobs", json=job_body, headers=writer).json()["id"]
    with session_scope(db) as session:
        version = registry.register_version(
            session,
            parent_id=base_model["id"],
            job_id=job_id,
            skill="arithmetic",
            checkpoint_uri="file:///nowhere",
            checkpoint_sha256="e" * 64,
        )
        gate = {"accepted": False, "reason": "general regressed", "rows": []}
        registry.decide_version(
            session, version_id=version.id, status=registry.VersionStatus.REJECTED, gate_report=gate
        )
    browser = dashboard(tokens.promoter)
    alias = unique("forced")
    confirm = browser.get("/ui/promote", alias=alias, version=version.id).text
    assert "Rejected:</strong> general regressed" in confirm and 'name="force" value="true"' in confirm
    move = {"alias": alias, "version": version.id, "expected_version": "", "force": "true"}
    assert_error_page(browser.post("/ui/promote", move), 422, "reason_required")
    done = browser.post("/ui/promote", {**move, "reason": "hotfix; gate flaked"})
    assert done.status_code == 303
    entry = client.get(f"/v1/aliases/{alias}/history", headers=writer).json()["data"][0]
    assert entry["forced"] is True and entry["reason"] == "hotfix; gate flaked"
    # Moved on to the base, rolling back onto the rejected version is forced the same way.
    onward = {"alias": alias, "version": base_model["id"], "expected_version": version.id}
    assert browser.post("/ui/promote", onward).status_code == 303
    back = browser.get(f"/ui/aliases/{alias}/rollback").text
    assert 'name="force" value="true"' in back and "Force roll back" in back
    rollback = {"expected_version": base_model["id"], "expected_target": version.id, "force": "true"}
    assert_error_page(browser.post(f"/ui/aliases/{alias}/rollback", rollback), 422, "reason_required")
    assert browser.post(f"/ui/aliases/{alias}/rollback", {**rollback, "reason": "again"}).status_code == 303
    entry = client.get(f"/v1/aliases/{alias}/history", headers=writer).json()["data"][0]
    assert (entry["action"], entry["forced"], entry["to_version"]) == ("rollback", True, version.id)


def test_admins_create_list_and_revoke_tokens(dashboard: Browser, tokens: Tokens) -> None:
    browser = dashboard(tokens.admin)
    name = unique("ui-token")
    created = browser.post("/ui/admin/tokens", {"name": name, "team": "ui-team", "scopes": "jobs:write"})
    assert created.status_code == 201 and 'id="secret"' in created.text
    secret = created.text.split('id="secret">')[1].split("<")[0]
    assert secret.startswith("sdft_")
    listed = browser.get("/ui/admin/tokens", team="ui-team").text
    assert name in listed and secret not in listed and secret[:12] in listed
    token_id = listed.split(f'{name} <span class="mono muted">')[1].split("<")[0]
    assert dashboard(secret).get("/ui/jobs").status_code == 200
    revoked = browser.post(f"/ui/admin/tokens/{token_id}/revoke")
    assert revoked.status_code == 303
    assert name not in browser.get("/ui/admin/tokens", team="ui-team").text
    assert name in browser.get("/ui/admin/tokens", team="ui-team", state="revoked").text
    bad = browser.post("/ui/admin/tokens", {"name": "x", "team": "Not A Team"})
    assert bad.status_code == 422 and "team" in bad.text


def test_unknown_pages_and_objects_are_not_found_pages(dashboard: Browser, tokens: Tokens) -> None:
    browser = dashboard(tokens.reader)
    assert_error_page(browser.get("/ui/no-such-page"), 404, "page_not_found")
    assert_error_page(browser.get("/ui/models/mv_missing"), 404, "model_not_found")
    assert_error_page(browser.get("/ui/jobs", status="sleeping"), 422, "invalid_status")


def test_the_job_list_filters_by_status_and_skill(
    dashboard: Browser, tokens: Tokens, client: TestClient, writer: dict[str, str], job_body: dict[str, Any]
) -> None:
    skill = unique("skill")
    body = json.loads(json.dumps(job_body))
    body["stages"][0]["skill"] = skill
    job_id = client.post("/v1/jobs", json=body, headers=writer).json()["id"]
    browser = dashboard(tokens.writer)
    assert job_id in browser.get("/ui/jobs", skill=skill).text
    assert job_id in browser.get("/ui/jobs", skill=skill, status="validating").text
    assert job_id not in browser.get("/ui/jobs", skill=skill, status="running").text
    assert job_id not in browser.get("/ui/jobs", skill=unique("other")).text


def _accepted_versions(db: sessionmaker[Session], job_id: str, base: dict[str, Any], count: int) -> list[str]:
    """Accepted children of `base`, as a worker's gate would leave them."""
    with session_scope(db) as session:
        return [
            registry.register_version(
                session,
                parent_id=base["id"],
                job_id=job_id,
                skill=unique("skill"),
                checkpoint_uri="file:///nowhere",
                checkpoint_sha256=secrets.token_hex(32),
                status=registry.VersionStatus.ACCEPTED,
            ).id
            for _ in range(count)
        ]


def test_a_rollback_goes_only_where_its_confirmation_page_said(
    dashboard: Browser,
    tokens: Tokens,
    client: TestClient,
    writer: dict[str, str],
    promoter: dict[str, str],
    db: sessionmaker[Session],
    job_body: dict[str, Any],
    base_model: dict[str, Any],
) -> None:
    job_id = client.post("/v1/jobs", json=job_body, headers=writer).json()["id"]
    a, b, c = _accepted_versions(db, job_id, base_model, 3)
    alias = unique("aba")

    def promote(version: str) -> None:
        moved = client.put(f"/v1/aliases/{alias}", json={"version": version}, headers=promoter)
        assert moved.status_code == 200, moved.text

    promote(a)
    promote(b)
    browser = dashboard(tokens.promoter)
    page = browser.get(f"/ui/aliases/{alias}/rollback").text
    assert f'name="expected_version" value="{b}"' in page and f'name="expected_target" value="{a}"' in page
    # Back on the version the page showed, but a rollback from there now goes to C.
    promote(c)
    promote(b)
    form = {"expected_version": b, "expected_target": a, "reason": "back to A, as shown"}
    stale = browser.post(f"/ui/aliases/{alias}/rollback", form)
    assert stale.status_code == 409 and "Someone moved" in stale.text, stale.text
    history = client.get(f"/v1/aliases/{alias}/history", headers=promoter).json()["data"]
    assert [entry["to_version"] for entry in history] == [b, c, b, a], "the stale click moved nothing"
    again = browser.get(f"/ui/aliases/{alias}/rollback").text
    assert f'name="expected_target" value="{c}"' in again
    done = browser.post(f"/ui/aliases/{alias}/rollback", {"expected_version": b, "expected_target": c})
    assert done.status_code == 303 and done.headers["location"] == f"/ui/aliases/{alias}?notice=rolled-back"
    assert client.get(f"/v1/aliases/{alias}", headers=promoter).json()["version"] == c


def test_promoting_the_version_an_alias_holds_says_nothing_changed(
    dashboard: Browser,
    tokens: Tokens,
    client: TestClient,
    promoter: dict[str, str],
    base_model: dict[str, Any],
) -> None:
    alias = unique("same")
    assert client.put(f"/v1/aliases/{alias}", json={"version": base_model["id"]}, headers=promoter).is_success
    browser = dashboard(tokens.promoter)
    form = {"alias": alias, "version": base_model["id"], "expected_version": base_model["id"]}
    same = browser.post("/ui/promote", form)
    assert same.status_code == 303 and same.headers["location"] == f"/ui/aliases/{alias}?notice=unchanged"
    page = browser.get(same.headers["location"]).text
    assert "Nothing changed: the alias already pointed at that version." in page
    assert "The alias was moved." not in page
    assert len(client.get(f"/v1/aliases/{alias}/history", headers=promoter).json()["data"]) == 1


def test_suite_and_upload_form_errors_name_the_field(
    dashboard: Browser, tokens: Tokens, training_file: str
) -> None:
    browser = dashboard(tokens.writer)
    wrong_kind = browser.post("/ui/suites", {"name": unique("s"), "file": training_file})
    assert wrong_kind.status_code == 422
    assert f"file: {training_file} was uploaded as demonstrations" in wrong_kind.text
    unknown_model = browser.post(
        "/ui/files",
        {"purpose": "regression_suite", "model": "mv_nope"},
        files={"file": ("suite.jsonl", b'{"prompt": "1+1", "reference": "2"}\n', "application/jsonl")},
    )
    assert unknown_model.status_code == 404 and "model: no model version" in unknown_model.text


def test_an_upload_over_the_limit_comes_back_to_the_form_naming_the_field_and_the_limit(
    dashboard: Browser, tokens: Tokens, backend: Settings, counts: Callable[[], dict[str, int]]
) -> None:
    browser = dashboard(tokens.writer)
    limit = backend.max_upload_bytes
    message = f"file: the file is larger than the {limit}-byte limit"
    before = counts()
    # Read by the view: over the file limit, within the body limit (which allows for the multipart framing).
    over = browser.post(
        "/ui/files", {"purpose": "demonstrations"}, files={"file": ("big.jsonl", b"x" * (limit + 10))}
    )
    assert over.status_code == 413 and 'id="upload-error"' in over.text and message in over.text
    # Refused by BodySizeLimit before any of it is read: back to the form, which says the same.
    far_over = browser.post(
        "/ui/files",
        {"purpose": "demonstrations"},
        files={"file": ("huge.jsonl", b"x" * (limit + MULTIPART_OVERHEAD_BYTES + 10))},
    )
    assert far_over.status_code == 303 and far_over.headers["location"] == "/ui/files?error=file_too_large"
    form = browser.get(far_over.headers["location"])
    assert form.status_code == 200 and 'id="upload-error"' in form.text and message in form.text
    assert counts() == before


def test_nul_in_a_path_query_or_form_field_is_a_400_page_naming_it(
    dashboard: Browser, tokens: Tokens, base_model: dict[str, Any], counts: Callable[[], dict[str, int]]
) -> None:
    browser = dashboard(tokens.admin)
    suite_file = {"file": ("suite.jsonl", b'{"prompt": "1+1", "reference": "2"}\n', "application/jsonl")}
    before = counts()
    for where, response in (
        ("job_id", browser.get("/ui/jobs/%00")),
        ("version_id", browser.get("/ui/models/mv%00x")),
        ("after", browser.get("/ui/suites", after="x\x00")),
        ("version", browser.post("/ui/promote", {"alias": unique("nul"), "version": "\x00"})),
        (
            "model",
            browser.post("/ui/files", {"purpose": "regression_suite", "model": "\x00"}, files=suite_file),
        ),
        ("name", browser.post("/ui/suites", {"name": "a\x00b", "file": "file_x"})),
    ):
        assert_error_page(response, 400, "invalid_characters")
        assert f'field <span class="mono">{where}</span>' in response.text, where
    assert counts() == before


def test_the_heatmap_does_not_name_another_teams_suite(
    dashboard: Browser,
    tokens: Tokens,
    client: TestClient,
    writer: dict[str, str],
    rival: dict[str, str],
    db: sessionmaker[Session],
    job_body: dict[str, Any],
    base_model: dict[str, Any],
) -> None:
    theirs = make_suite(client, rival)
    job_id = client.post("/v1/jobs", json=job_body, headers=writer).json()["id"]
    (version_id,) = _accepted_versions(db, job_id, base_model, 1)
    with session_scope(db) as session:
        registry.record_score(
            session,
            model_version_id=version_id,
            suite_sha256=theirs["sha256"],
            decoding_hash="d" * 64,
            score=55.0,
            n=3,
            per_item=[],
            ci_low=50.0,
            ci_high=60.0,
            suite_id=theirs["id"],
        )
    page = dashboard(tokens.reader).get(f"/ui/models/{version_id}").text
    assert theirs["name"] not in page
    heat = page[page.index('id="heatmap"') : page.index("</table>", page.index('id="heatmap"'))]
    assert "<th>another team&#39;s suite 1</th>" in heat
    assert 'title="another team&#39;s suite 1 on ' in heat and "55.0 points" in heat
    assert theirs["name"] in dashboard(tokens.admin).get(f"/ui/models/{version_id}").text, "admins see all"


def test_an_upload_checks_its_file_before_it_takes_the_write_lock(
    dashboard: Browser, tokens: Tokens, app: FastAPI, base_model: dict[str, Any]
) -> None:
    """The pre-flight (seconds for a large file) runs on read-only connections, as the API's does; only
    storing the checked file writes (on SQLite a write transaction blocks every other writer)."""
    browser = dashboard(tokens.writer)
    csrf = csrf_of(browser.get("/ui/files").text)
    writes: list[str] = []

    def record(conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if not conn.get_execution_options().get(READ_ONLY_OPTION):
            writes.append(" ".join(statement.split()[:3]))

    event.listen(app.state.engine, "before_cursor_execute", record)
    try:
        stored = browser.http.post(
            "/ui/files",
            data={"csrf_token": csrf, "purpose": "demonstrations", "model": base_model["id"]},
            files={"file": ("demos.jsonl", demonstration_lines(3).encode(), "application/jsonl")},
        )
    finally:
        event.remove(app.state.engine, "before_cursor_execute", record)
    assert stored.status_code == 303, stored.text
    assert [w for w in writes if not w.startswith("BEGIN")] == ["INSERT INTO uploaded_file"], writes
