"""The `sdft` verbs for files (list, content, delete), job metadata and metrics, version edits and
webhooks, against a live server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .conftest import Tokens, demonstration_lines, unique


def test_file_verbs(cli: Any, tmp_path: Path) -> None:
    data = tmp_path / "demos.jsonl"
    data.write_text(demonstration_lines(2))
    code, uploaded, _ = cli("files", "upload", str(data), "--purpose", "demonstrations")
    assert code == 0
    code, page, _ = cli("files", "list", "--purpose", "demonstrations", "--limit", "100")
    assert code == 0 and uploaded["id"] in [f["id"] for f in page["data"]]
    out = tmp_path / "back.jsonl"
    assert cli("files", "content", uploaded["id"], "-o", str(out))[0] == 0
    assert out.read_bytes() == data.read_bytes()
    code, deleted, _ = cli("files", "delete", uploaded["id"])
    assert code == 0 and deleted["deleted"] is True
    code, _, err = cli("files", "delete", uploaded["id"])
    assert code == 1 and "file_not_found" in err


def test_job_and_model_verbs(cli: Any, tokens: Tokens, job_body: dict[str, Any], tmp_path: Path) -> None:
    run = unique("cli-run")
    body = tmp_path / "job.json"
    body.write_text(json.dumps({**job_body, "metadata": {"run": run}}))
    code, job, _ = cli("jobs", "create", str(body))
    assert code == 0 and job["metadata"] == {"run": run}
    code, page, _ = cli("jobs", "list", "--metadata", f"run={run}")
    assert code == 0 and [j["id"] for j in page["data"]] == [job["id"]]
    code, _, err = cli("jobs", "list", "--metadata", "no-equals-sign")
    assert code == 2 and "KEY=VALUE" in err
    code, out, _ = cli("jobs", "metrics", job["id"], "--format", "csv")
    assert code == 0 and out.startswith("stage,skill,step,total_steps,")

    tag = unique("cli-tag")
    code, edited, _ = cli("models", "edit", job_body["base"], "--tag", tag, token=tokens.promoter)
    assert code == 0 and edited["tags"] == [tag]
    code, page, _ = cli("models", "list", "--tag", tag)
    assert code == 0 and [v["id"] for v in page["data"]] == [job_body["base"]]
    code, edited, _ = cli("models", "edit", job_body["base"], "--tag", "", token=tokens.promoter)
    assert code == 0 and edited["tags"] == []


def test_webhook_verbs(cli: Any) -> None:
    code, created, err = cli(
        "webhooks", "create", "https://hooks.example.com/cli", "--event", "job.status_changed"
    )
    assert code == 0 and created["secret"].startswith("whsec_") and "only once" in err
    code, page, _ = cli("webhooks", "list", "--limit", "100")
    assert code == 0 and created["id"] in [w["id"] for w in page["data"]]
    code, shown, _ = cli("webhooks", "show", created["id"])
    assert code == 0 and "secret" not in shown and shown["url"] == "https://hooks.example.com/cli"
    code, log, _ = cli("webhooks", "deliveries", created["id"])
    assert code == 0 and log["data"] == []
    code, deleted, _ = cli("webhooks", "delete", created["id"])
    assert code == 0 and deleted == {"id": created["id"], "object": "webhook", "deleted": True}
    code, _, err = cli("webhooks", "create", "http://127.0.0.1/x", "--event", "alias.moved")
    assert code == 1 and "private_url" in err
