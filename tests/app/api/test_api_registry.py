"""Model versions (registration, lineage, scores, forgetting matrix) and aliases (compare-and-set,
force with a reason, rollback, append-only history)."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.contracts.artifacts import model_dir_sha256
from app.registry import service as registry
from app.registry.service import VersionStatus

from .conftest import make_suite, unique, write_model_dir
from .test_api_files import assert_error


def child(
    db: sessionmaker[Session],
    parent_id: str,
    job_id: str,
    skill: str,
    status: VersionStatus = VersionStatus.ACCEPTED,
) -> str:
    """A trained version as a worker would register it (the job id must exist: see `job_id` fixture)."""
    with db.begin() as session:
        version = registry.register_version(
            session,
            parent_id=parent_id,
            job_id=job_id,
            skill=skill,
            checkpoint_uri=f"file:///checkpoints/{job_id}/{skill}",
            checkpoint_sha256=f"{len(skill):064x}",
            status=status,
            gate_report={"accepted": status == VersionStatus.ACCEPTED},
        )
        return version.id


@pytest.fixture()
def job_id(client: TestClient, writer: dict[str, str], job_body: dict[str, Any]) -> str:
    return str(client.post("/v1/jobs", json=job_body, headers=writer).json()["id"])


# --------------------------------------------------------------------------- registration


def test_register_a_base_model(
    client: TestClient, admin: dict[str, str], tmp_path: Path, counts: Callable[[], dict[str, int]]
) -> None:
    directory = write_model_dir(tmp_path / "m")
    response = client.post(
        "/v1/models", json={"path": str(directory), "name": "tiny", "description": "d"}, headers=admin
    )
    assert response.status_code == 201, response.text
    version = response.json()
    assert version["id"].startswith("mv_") and version["status"] == "accepted"
    assert version["parent_id"] is None and version["base_id"] == version["id"] and version["number"] == 0
    assert version["checkpoint_uri"] == directory.resolve().as_uri()
    assert version["checkpoint_sha256"] == model_dir_sha256(directory)
    before = counts()
    again = client.post("/v1/models", json={"path": directory.as_uri(), "name": "tiny"}, headers=admin)
    assert again.status_code == 200 and again.json()["id"] == version["id"]
    assert counts() == before
    (directory / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 99}))
    assert_error(
        client.post("/v1/models", json={"path": str(directory), "name": "tiny"}, headers=admin),
        409,
        "model_changed",
        "path",
    )


def _break_tokenizer_config(d: Path) -> None:
    (d / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<eos>"}))


def _truncate_weights(d: Path) -> None:
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])


def _lying_header(d: Path) -> None:
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 1_000_000]}}).encode()
    (d / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)


BROKEN_MODELS: list[tuple[str, Callable[[Path], None], str]] = [
    ("no config", lambda d: (d / "config.json").unlink(), "config.json: missing"),
    ("bad tokenizer", lambda d: (d / "tokenizer.json").write_text("{}"), "tokenizer.json: does not load"),
    ("no chat template", _break_tokenizer_config, "no chat template"),
    ("no weights", lambda d: (d / "model.safetensors").unlink(), "no *.safetensors"),
    ("truncated weights", _truncate_weights, "model.safetensors"),
    ("header points outside the file", _lying_header, "points outside the file"),
]


@pytest.mark.parametrize(("case", "breaks", "words"), BROKEN_MODELS, ids=[c[0] for c in BROKEN_MODELS])
def test_unusable_model_directories_are_422(
    client: TestClient,
    admin: dict[str, str],
    tmp_path: Path,
    counts: Callable[[], dict[str, int]],
    case: str,
    breaks: Callable[[Path], None],
    words: str,
) -> None:
    directory = write_model_dir(tmp_path / "m")
    breaks(directory)
    before = counts()
    error = assert_error(
        client.post("/v1/models", json={"path": str(directory), "name": "x"}, headers=admin),
        422,
        "invalid_model",
        "path",
    )
    assert words in error["message"]
    assert counts() == before


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("relative/dir", "invalid_model"),
        ("/no/such/dir", "invalid_model"),
        ("s3://bucket/m", "unsupported_uri"),
        ("file://otherhost/m", "unsupported_uri"),
        ("/tmp/" + "a" * 300 + "/m", "invalid_model"),  # a name longer than the filesystem takes
    ],
)
def test_bad_model_paths(client: TestClient, admin: dict[str, str], path: str, code: str) -> None:
    assert_error(
        client.post("/v1/models", json={"path": path, "name": "x"}, headers=admin), 422, code, "path"
    )


def test_registering_needs_admin(client: TestClient, writer: dict[str, str], model_dir: Path) -> None:
    response = client.post("/v1/models", json={"path": str(model_dir), "name": "x"}, headers=writer)
    assert_error(response, 403, "insufficient_scope", None)


# --------------------------------------------------------------------------- lineage and versions


def test_lineage_walks_to_the_root(
    client: TestClient,
    reader: dict[str, str],
    base_model: dict[str, Any],
    job_id: str,
    db: sessionmaker[Session],
) -> None:
    first = child(db, base_model["id"], job_id, "tool-use")
    second = child(db, first, job_id, "science")
    assert child(db, first, job_id, "science") == second  # idempotent per (job, skill)
    lineage = client.get(f"/v1/models/{second}/lineage", headers=reader).json()
    assert [v["id"] for v in lineage["data"]] == [second, first, base_model["id"]]
    shown = client.get(f"/v1/models/{second}", headers=reader).json()
    assert (shown["parent_id"], shown["base_id"], shown["job_id"], shown["skill"]) == (
        first,
        base_model["id"],
        job_id,
        "science",
    )
    assert shown["number"] == client.get(f"/v1/models/{first}", headers=reader).json()["number"] + 1
    assert_error(client.get("/v1/models/mv_nope/lineage", headers=reader), 404, "model_not_found", "id")


def test_decide_version_is_compare_and_set(
    base_model: dict[str, Any], job_id: str, db: sessionmaker[Session]
) -> None:
    version_id = child(db, base_model["id"], job_id, "decided", status=VersionStatus.CANDIDATE)
    with db.begin() as session:
        assert registry.decide_version(
            session, version_id=version_id, status=VersionStatus.REJECTED, gate_report={"a": 1}
        )
        assert not registry.decide_version(
            session, version_id=version_id, status=VersionStatus.ACCEPTED, gate_report={}
        )
    with db() as session:
        version = registry.get_version(session, version_id)
        assert (version.status, version.gate_report) == ("rejected", {"a": 1})


def test_list_models_filters_by_status(
    client: TestClient,
    reader: dict[str, str],
    base_model: dict[str, Any],
    job_id: str,
    db: sessionmaker[Session],
) -> None:
    rejected = child(db, base_model["id"], job_id, "listed", status=VersionStatus.REJECTED)
    listed = client.get("/v1/models", params={"status": "rejected", "limit": 100}, headers=reader).json()[
        "data"
    ]
    assert rejected in [v["id"] for v in listed] and {v["status"] for v in listed} == {"rejected"}


# --------------------------------------------------------------------------- aliases


def test_alias_compare_and_set_history_and_rollback(
    client: TestClient,
    promoter: dict[str, str],
    reader: dict[str, str],
    base_model: dict[str, Any],
    job_id: str,
    db: sessionmaker[Session],
    counts: Callable[[], dict[str, int]],
) -> None:
    alias = unique("prod")
    a, b, c = base_model["id"], child(db, base_model["id"], job_id, "a1"), None
    c = child(db, b, job_id, "a2")
    url = f"/v1/aliases/{alias}"
    assert (
        client.put(url, json={"version": a, "expected_version": None}, headers=promoter).json()["version"]
        == a
    )
    assert_error(
        client.put(url, json={"version": b, "expected_version": None}, headers=promoter),
        409,
        "alias_conflict",
        "expected_version",
    )
    assert (
        client.put(
            url, json={"version": b, "expected_version": a, "reason": "tool use"}, headers=promoter
        ).status_code
        == 200
    )
    before = counts()
    stale = client.put(url, json={"version": c, "expected_version": a}, headers=promoter)
    assert_error(stale, 409, "alias_conflict", "expected_version")
    assert counts() == before
    assert client.put(url, json={"version": c}, headers=promoter).json()["version"] == c

    assert (
        client.post(f"{url}/rollback", json={"reason": "bad answers"}, headers=promoter).json()["version"]
        == b
    )
    assert client.post(f"{url}/rollback", headers=promoter).json()["version"] == a
    assert_error(client.post(f"{url}/rollback", headers=promoter), 409, "nothing_to_roll_back", None)

    history = client.get(f"{url}/history", params={"limit": 100}, headers=reader).json()["data"]
    moves = [(h["action"], h["from_version"], h["to_version"], h["reason"]) for h in reversed(history)]
    assert moves == [
        ("promote", None, a, None),
        ("promote", a, b, "tool use"),
        ("promote", b, c, None),
        ("rollback", c, b, "bad answers"),
        ("rollback", b, a, None),
    ]
    assert all(h["actor"].startswith("test-promoter") for h in history)
    page = client.get(f"{url}/history", params={"limit": 2, "after": history[1]["id"]}, headers=reader).json()
    assert [h["id"] for h in page["data"]] == [history[2]["id"], history[3]["id"]] and page["has_more"]
    # Versions are never rewritten by moves.
    assert client.get(f"/v1/models/{c}", headers=reader).json()["status"] == "accepted"


def test_rejected_versions_need_force_and_a_reason(
    client: TestClient,
    promoter: dict[str, str],
    reader: dict[str, str],
    writer: dict[str, str],
    base_model: dict[str, Any],
    job_id: str,
    job_body: dict[str, Any],
    db: sessionmaker[Session],
) -> None:
    alias = unique("prod")
    rejected = child(db, base_model["id"], job_id, "bad", status=VersionStatus.REJECTED)
    undecided = child(db, base_model["id"], job_id, "undecided", status=VersionStatus.CANDIDATE)
    url = f"/v1/aliases/{alias}"
    # Nor does a job build on them: its gate compares with the parent alone, so the losses would pass on.
    for version, status in [(rejected, "rejected"), (undecided, "candidate")]:
        error = assert_error(
            client.post("/v1/jobs", json={**job_body, "base": version}, headers=writer),
            409,
            "version_not_accepted",
            "base",
        )
        assert error["message"].startswith(f"{version} is {status}")
    assert_error(
        client.put(url, json={"version": rejected}, headers=promoter), 409, "version_not_accepted", "force"
    )
    assert_error(
        client.put(url, json={"version": rejected, "force": True}, headers=promoter),
        422,
        "reason_required",
        "reason",
    )
    assert_error(client.get(url, headers=reader), 404, "alias_not_found", "name")
    forced = client.put(
        url, json={"version": rejected, "force": True, "reason": "hotfix, gate flaky"}, headers=promoter
    )
    assert forced.status_code == 200
    entry = client.get(f"{url}/history", headers=reader).json()["data"][0]
    assert entry["forced"] is True and entry["reason"] == "hotfix, gate flaky"
    assert client.get(f"/v1/models/{rejected}", headers=reader).json()["status"] == "rejected"
    assert client.get(f"/v1/models/{rejected}", headers=reader).json()["aliases"] == [alias]
    # Promoted with force and a reason, a human vouched for it: jobs may build on it.
    built = client.post("/v1/jobs", json={**job_body, "base": f"alias:{alias}"}, headers=writer)
    assert built.status_code == 201 and built.json()["base"] == rejected, built.text
    # A rollback onto it needs force and a reason as well.
    assert client.put(url, json={"version": base_model["id"]}, headers=promoter).status_code == 200
    rollback = f"{url}/rollback"
    assert_error(client.post(rollback, headers=promoter), 409, "version_not_accepted", "force")
    assert_error(
        client.post(rollback, json={"force": True}, headers=promoter), 422, "reason_required", "reason"
    )
    back = client.post(rollback, json={"force": True, "reason": "back to the hotfix"}, headers=promoter)
    assert back.status_code == 200 and back.json()["version"] == rejected
    entry = client.get(f"{url}/history", headers=reader).json()["data"][0]
    assert (entry["action"], entry["forced"], entry["reason"]) == ("rollback", True, "back to the hotfix")


def test_auto_promote_moves_an_alias_only_along_its_lineage(
    client: TestClient, admin: dict[str, str], base_model: dict[str, Any], job_id: str,
    job_body: dict[str, Any], db: sessionmaker[Session],
) -> None:  # fmt: skip
    alias = unique("auto")
    ahead = child(db, base_model["id"], job_id, "ahead")  # learned something the base has not
    assert client.put(f"/v1/aliases/{alias}", json={"version": ahead}, headers=admin).status_code == 200
    body = {**job_body, "auto_promote": alias}
    # From the older base, the candidate would replace `ahead` and drop what it learned.
    error = assert_error(
        client.post("/v1/jobs", json={**body, "base": base_model["id"]}, headers=admin),
        409,
        "auto_promote_off_lineage",
        "auto_promote",
    )
    assert ahead in error["message"]
    further = child(db, ahead, job_id, "further")  # a descendant of the alias's version is fine
    for base in (f"alias:{alias}", ahead, further):
        created = client.post("/v1/jobs", json={**body, "base": base}, headers=admin)
        assert created.status_code == 201, (base, created.text)


def test_promoting_the_version_an_alias_holds_records_nothing(
    client: TestClient, promoter: dict[str, str], reader: dict[str, str], base_model: dict[str, Any],
    job_id: str, db: sessionmaker[Session],
) -> None:  # fmt: skip
    url = f"/v1/aliases/{unique('same')}"
    newer = child(db, base_model["id"], job_id, "newer")
    for version in (base_model["id"], newer, newer):
        assert client.put(url, json={"version": version}, headers=promoter).status_code == 200
    history = client.get(f"{url}/history", headers=reader).json()["data"]
    assert [h["to_version"] for h in history] == [newer, base_model["id"]]
    back = client.post(f"{url}/rollback", headers=promoter)  # to the version before, not to itself
    assert back.status_code == 200 and back.json()["version"] == base_model["id"]


def test_alias_errors(
    client: TestClient, promoter: dict[str, str], writer: dict[str, str], base_model: dict[str, Any]
) -> None:
    assert_error(
        client.put("/v1/aliases/Bad Name", json={"version": base_model["id"]}, headers=promoter),
        422,
        "invalid_request",
        "name",
    )
    assert_error(
        client.put("/v1/aliases/x", json={"version": "mv_nope"}, headers=promoter),
        404,
        "model_not_found",
        "version",
    )
    assert_error(
        client.put("/v1/aliases/x", json={"version": base_model["id"]}, headers=writer),
        403,
        "insufficient_scope",
        None,
    )
    assert_error(
        client.post("/v1/aliases/never-made/rollback", headers=promoter), 404, "alias_not_found", "name"
    )
    assert_error(
        client.get("/v1/aliases/never-made/history", headers=promoter), 404, "alias_not_found", "name"
    )


# --------------------------------------------------------------------------- scores and forgetting


def test_admins_read_per_item_outputs_of_scores_without_a_suite_row(
    client: TestClient,
    admin: dict[str, str],
    reader: dict[str, str],
    base_model: dict[str, Any],
    job_id: str,
    db: sessionmaker[Session],
) -> None:
    trained = child(db, base_model["id"], job_id, "scored-by-sha")
    with db.begin() as session:  # recorded by sha alone, as the CLI's scores are
        registry.record_score(
            session,
            model_version_id=trained,
            suite_sha256="f" * 64,
            decoding_hash="greedy-256",
            score=50.0,
            n=1,
            per_item=[{"id": "row-1", "score": 0.5}],
        )

    def per_item(headers: dict[str, str]) -> Any:
        url = f"/v1/models/{trained}/scores"
        return client.get(url, params={"per_item": "true"}, headers=headers).json()["data"][0]["per_item"]

    assert per_item(admin) == [{"id": "row-1", "score": 0.5}]
    assert per_item(reader) is None


def test_the_forgetting_matrix_does_not_name_another_teams_suite(
    client: TestClient,
    admin: dict[str, str],
    reader: dict[str, str],
    rival: dict[str, str],
    base_model: dict[str, Any],
    job_id: str,
    db: sessionmaker[Session],
) -> None:
    theirs = make_suite(client, rival)
    trained = child(db, base_model["id"], job_id, "scored-on-theirs")
    with db.begin() as session:
        registry.record_score(
            session, model_version_id=trained, suite_sha256=theirs["sha256"], decoding_hash="d" * 64,
            score=55.0, n=3, per_item=[], suite_id=theirs["id"],
        )  # fmt: skip

    def suites(headers: dict[str, str]) -> Any:
        response = client.get("/v1/forgetting", params={"version": trained}, headers=headers)
        assert response.status_code == 200, response.text
        return response.json()["suites"]

    assert theirs["name"] not in suites(reader) and "another team's suite 1" in suites(reader)
    assert theirs["name"] in suites(admin)


def test_scores_cache_and_forgetting_matrix(
    client: TestClient,
    promoter: dict[str, str],
    reader: dict[str, str],
    writer: dict[str, str],
    base_model: dict[str, Any],
    suite: dict[str, Any],
    job_id: str,
    db: sessionmaker[Session],
) -> None:
    trained = child(db, base_model["id"], job_id, "scored")
    with db.begin() as session:
        for version_id, score in ((base_model["id"], 40.0), (trained, 70.0)):
            registry.record_score(
                session,
                model_version_id=version_id,
                suite_sha256=suite["sha256"],
                decoding_hash="greedy-256",
                score=score,
                n=3,
                per_item=[{"id": "row-1", "score": 1.0}],
                ci_low=score - 5,
                ci_high=score + 5,
                suite_id=suite["id"],
            )
        again = registry.record_score(
            session,
            model_version_id=trained,
            suite_sha256=suite["sha256"],
            decoding_hash="greedy-256",
            score=1.0,
            n=3,
            per_item=[],
        )
        assert again.score == 70.0  # the first recorded score is kept
    with db() as session:
        cached = registry.get_cached_score(
            session, suite_sha256=suite["sha256"], decoding_hash="greedy-256", model_version_id=trained
        )
        assert cached is not None and cached.score == 70.0
        by_checkpoint = registry.get_cached_score(
            session,
            suite_sha256=suite["sha256"],
            decoding_hash="greedy-256",
            checkpoint_sha256=base_model["checkpoint_sha256"],
        )
        assert by_checkpoint is not None and by_checkpoint.score == 40.0
        assert (
            registry.get_cached_score(
                session, suite_sha256=suite["sha256"], decoding_hash="other", model_version_id=trained
            )
            is None
        )

    scores = client.get(f"/v1/models/{trained}/scores", headers=reader).json()["data"]
    assert [(s["score"], s["per_item"]) for s in scores] == [(70.0, None)]
    detailed = client.get(f"/v1/models/{trained}/scores", params={"per_item": "true"}, headers=reader).json()[
        "data"
    ]
    assert detailed[0]["per_item"] == [{"id": "row-1", "score": 1.0}]

    alias = unique("forget")
    client.put(f"/v1/aliases/{alias}", json={"version": trained}, headers=promoter)
    matrix = client.get("/v1/forgetting", params={"alias": alias}, headers=reader).json()
    assert [v["version_id"] for v in matrix["versions"]] == [base_model["id"], trained]
    column = matrix["suites"].index(suite["name"])  # other tests may score the shared base on their suites
    assert [row[column]["score"] for row in matrix["cells"]] == [40.0, 70.0]
    png = client.get("/v1/forgetting", params={"alias": alias, "format": "png"}, headers=reader)
    assert (
        png.status_code == 200
        and png.headers["content-type"] == "image/png"
        and png.content[:8] == b"\x89PNG\r\n\x1a\n"
    )
    assert_error(
        client.get("/v1/forgetting", params={"alias": "nope"}, headers=reader), 404, "alias_not_found", "name"
    )
