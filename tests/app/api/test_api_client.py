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

from app.client import main
from app.settings import Settings, get_settings

from .conftest import CliRun, LiveServer, Tokens, cli_runner, demonstration_lines

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
    assert code == 0 and streamed[-1] == {"event": "end", "job_id": job["id"], "status": "cancelled"}
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
