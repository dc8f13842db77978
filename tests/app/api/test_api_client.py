"""The `sdft` client commands against a live server, `tokens create` on the database, and `serve`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from app.client import ApiClient, ClientError, main
from app.settings import Settings, get_settings

from .conftest import (
    CliRun,
    LiveServer,
    Tokens,
    cli_runner,
    demonstration_lines,
    unique,
    upload,
)

REPO_ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture()
def cli(
    live_server: LiveServer,
    tokens: Tokens,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> CliRun:
    return cli_runner(live_server, tokens.admin, monkeypatch, capsys, tmp_path / "config")


def test_client_commands_end_to_end(
    cli: Any, tmp_path: Path, suite: dict[str, Any], base_model: dict[str, Any]
) -> None:
    data = tmp_path / "demos.jsonl"
    data.write_text(demonstration_lines(3))
    code, uploaded, _ = cli(
        "files", "upload", str(data), "--purpose", "demonstrations", "--model", base_model["id"]
    )
    assert code == 0 and uploaded["preflight"]["rows"] == 3

    body = tmp_path / "job.json"
    body.write_text(
        json.dumps(
            {
                "base": base_model["id"],
                "stages": [{"skill": "cli", "training_file": uploaded["id"], "suites": [suite["id"]]}],
            }
        )
    )
    code, job, _ = cli("jobs", "create", str(body), "--idempotency-key", "cli-key-1")
    assert code == 0 and job["status"] == "validating"
    assert cli("jobs", "create", str(body), "--idempotency-key", "cli-key-1")[1]["id"] == job["id"]
    assert cli("jobs", "get", job["id"])[1]["id"] == job["id"]
    assert job["id"] in [j["id"] for j in cli("jobs", "list", "--limit", "100")[1]["data"]]
    assert cli("jobs", "cancel", job["id"])[1]["status"] == "cancelled"

    code, out, _ = cli("jobs", "events", job["id"], "--follow")
    streamed = [json.loads(line) for line in out.splitlines()]
    # 1: the job did not succeed (README, "Exit codes")
    assert code == 1 and streamed[-1] == {"event": "end", "job_id": job["id"], "status": "cancelled"}
    assert "cancelled by" in streamed[-2]["message"]

    assert base_model["id"] in [v["id"] for v in cli("models", "list", "--limit", "100")[1]["data"]]
    assert cli("models", "show", base_model["id"])[1]["name"] == "tiny-base"
    assert [v["id"] for v in cli("models", "lineage", base_model["id"])[1]["data"]] == [base_model["id"]]


def test_promote_and_rollback(cli: Any, tokens: Tokens, base_model: dict[str, Any]) -> None:
    alias = f"cli-{os.getpid()}-{time.time_ns() % 10**6}"
    code, moved, _ = cli(
        "promote", alias, base_model["id"], "--expected-version", "none", token=tokens.promoter
    )
    assert code == 0 and moved["version"] == base_model["id"]
    code, _, err = cli(
        "promote", alias, base_model["id"], "--expected-version", "mv_other", token=tokens.promoter
    )
    assert code == 1 and "409 alias_conflict" in err and "expected_version" in err
    code, _, err = cli("rollback", alias, token=tokens.promoter)
    assert code == 1 and "nothing_to_roll_back" in err
    code, _, err = cli("promote", alias, base_model["id"], token=tokens.reader)
    assert code == 1 and "403 insufficient_scope" in err


def test_unreachable_server_is_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SDFT_API_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("SDFT_TOKEN", "x")
    assert main(["jobs", "list"]) == 2
    assert "cannot reach" in capsys.readouterr().err


def test_token_from_the_config_file(
    live_server: LiveServer,
    tokens: Tokens,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("SDFT_TOKEN", raising=False)
    monkeypatch.delenv("SDFT_API_URL", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    (tmp_path / "sdft").mkdir()
    (tmp_path / "sdft" / "config.json").write_text(
        json.dumps({"token": tokens.reader, "api_url": live_server.url})
    )
    assert main(["jobs", "list", "--limit", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["object"] == "list"


def test_tokens_create_prints_the_token_once(
    backend: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], client: Any
) -> None:
    monkeypatch.setenv("SDFT_DATABASE_URL", backend.database_url)
    get_settings.cache_clear()
    try:
        assert (
            main(["tokens", "create", "--scope", "jobs:write", "--scope", "models:promote", "--name", "ci"])
            == 0
        )
    finally:
        get_settings.cache_clear()
    captured = capsys.readouterr()
    secret = captured.out.strip()
    assert (
        secret.startswith("sdft_")
        and "jobs:write, models:promote" in captured.err
        and secret not in captured.err
    )
    assert client.get("/v1/jobs", headers=Tokens.header(secret)).status_code == 200


def test_tokens_create_refuses_bad_input_and_a_missing_database_without_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SDFT_DATA_DIR", str(tmp_path / "typo"))
    monkeypatch.delenv("SDFT_DATABASE_URL", raising=False)
    get_settings.cache_clear()
    try:
        for argv, expected in [
            (["--team", "Ops Team"], "team: String should match pattern"),
            (["--name", ""], "name: String should have at least 1 character"),
            ([], "no database at"),  # and nothing is created on the way
        ]:
            assert main(["tokens", "create", "--scope", "jobs:write", *argv]) == 2
            assert expected in capsys.readouterr().err
    finally:
        get_settings.cache_clear()
    assert not (tmp_path / "typo").exists()


def test_ports_outside_1_to_65535_are_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--port", "70000"])
    assert exited.value.code == 2 and "70000 is not a port (1 to 65535)" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_bootstraps_the_embedded_default(tmp_path: Path) -> None:
    port = _free_port()
    env = {**os.environ, "SDFT_DATA_DIR": str(tmp_path / "data"), "PYTHONPATH": str(REPO_ROOT)}
    env.pop("SDFT_DATABASE_URL", None)
    env.pop("SDFT_BROKER_URL", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "app.client", "serve", "--port", str(port)],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, "sdft serve did not start"
            time.sleep(0.2)
        token = (tmp_path / "data" / "admin.token").read_text().strip()
        response = httpx.get(f"http://127.0.0.1:{port}/v1/jobs", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200
    finally:
        process.send_signal(signal.SIGINT)
        _out, err = process.communicate(timeout=30)
    assert f"admin token: {tmp_path / 'data' / 'admin.token'}" in err


# --------------------------------------------------------------------------- bad answers, bad inputs


def test_local_files_and_urls_that_cannot_be_used_are_exit_2_naming_them(
    cli: CliRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.jsonl"
    latin1 = tmp_path / "latin1.json"
    latin1.write_bytes(b"\xff\xfe{}")
    code, _, err = cli("files", "upload", str(missing), "--purpose", "demonstrations")
    assert code == 2 and err == f"error: cannot read {missing}: No such file or directory\n"
    code, _, err = cli("files", "upload", str(tmp_path), "--purpose", "demonstrations")
    assert code == 2 and err == f"error: cannot read {tmp_path}: Is a directory\n"
    code, _, err = cli("jobs", "create", str(missing))
    assert code == 2 and err == f"error: cannot read {missing}: No such file or directory\n"
    code, _, err = cli("jobs", "create", str(latin1))
    assert code == 2 and err.startswith(f"error: {latin1} is not UTF-8 text: 'utf-8' codec can't decode")

    data = tmp_path / "demos.jsonl"
    data.write_text(demonstration_lines(2))
    code, uploaded, _ = cli("files", "upload", str(data), "--purpose", "demonstrations")
    assert code == 0
    into = tmp_path / "no-such-dir" / "out.jsonl"
    code, _, err = cli("files", "content", uploaded["id"], "-o", str(into))
    assert code == 2 and err == f"error: cannot write {into}: there is no folder {into.parent}\n"
    code, _, err = cli("files", "content", uploaded["id"], "-o", str(tmp_path))
    assert code == 2 and err == f"error: cannot write {tmp_path}: it is a folder\n"

    monkeypatch.setenv("SDFT_API_URL", "http://127.0.0.1:1:x")
    assert main(["jobs", "list"]) == 2
    assert capsys.readouterr().err == (
        "error: SDFT_API_URL 'http://127.0.0.1:1:x' is not a valid URL: Invalid port: '1:x'\n"
    )
    monkeypatch.delenv("SDFT_API_URL")
    config = tmp_path / "config" / "sdft" / "config.json"
    config.parent.mkdir(parents=True)
    config.write_text(json.dumps({"api_url": "127.0.0.1:8000"}))
    assert main(["jobs", "list"]) == 2
    assert capsys.readouterr().err == (
        f"error: api_url in {config} '127.0.0.1:8000' is not an http:// or https:// URL with a host\n"
    )


def test_a_refused_upload_or_suite_lists_every_bad_row(cli: CliRun, tmp_path: Path, tokens: Tokens) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\nnot json\n{"prompt":"b"}\n{"prompt":"b","demonstration":"c"}\n')
    code, _, err = cli("files", "upload", str(bad), "--purpose", "demonstrations")
    lines = err.splitlines()
    assert code == 1 and lines[0].startswith("error: 422 invalid_file: 3 problem(s) in the file")
    assert [line.split(":")[0] for line in lines[1:]] == ["  line 1", "  line 2", "  line 3"]
    assert lines[2].startswith("  line 2: row: not valid JSON")


def test_a_suite_that_does_not_fit_its_file_lists_every_bad_row(
    live_server: LiveServer, client: TestClient, writer: dict[str, str]
) -> None:
    rows = "".join(json.dumps({"prompt": f"q{i}", "reference": "forty"}) + "\n" for i in range(2))
    file_id = upload(client, writer, rows, "regression_suite").json()["id"]
    api = ApiClient(live_server.url, writer["Authorization"].removeprefix("Bearer "))
    with pytest.raises(ClientError) as refused:
        api.request("POST", "/v1/suites", json={"name": unique("s"), "file": file_id, "grader": "numeric"})
    lines = str(refused.value).splitlines()
    assert lines[0] == (
        "422 invalid_suite: the file does not fit these suite settings: 2 problem(s) in suite: (param: file)"
    )
    assert [line.split(":")[0] for line in lines[1:]] == ["  line 1", "  line 2"]  # each once
    assert refused.value.exit_code == 1


# --------------------------------------------------------------------------- ids and limits


def test_ids_are_one_path_segment(cli: CliRun, tokens: Tokens) -> None:
    code, hook, _ = cli(
        "webhooks", "create", "https://hooks.example.com/ids", "--event", "alias.moved", token=tokens.writer
    )
    assert code == 0
    code, _, err = cli("files", "delete", f"../webhooks/{hook['id']}", token=tokens.writer)
    assert code == 1 and "404" in err  # one segment with '/' in it: no route, nothing deleted
    for dots in (".", ".."):
        code, _, err = cli("jobs", "get", dots)
        assert code == 1 and "404 job_not_found" in err
    assert cli("webhooks", "show", hook["id"], token=tokens.writer)[0] == 0  # still there


@pytest.mark.parametrize("limit", ["0", "101", "x"])
def test_limit_outside_the_apis_page_sizes_is_a_usage_error(
    limit: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as usage:
        main(["jobs", "list", "--limit", limit])
    assert usage.value.code == 2 and "--limit" in capsys.readouterr().err
