"""The product end to end: POST files, suites and a job over HTTP; a real Celery worker process trains,
evaluates, gates and registers; the registry shows the lineage. Tiny model, real everything else."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from app.contracts.demonstrations import parse_demonstrations
from app.training.stage_config import parse_stage_config
from workers.training.loop import run_stage

DEMOS = "".join(
    json.dumps({"prompt": f"What is {i} plus {i}?", "demonstration": f"{i} plus {i} is {2 * i}."}) + "\n"
    for i in range(6)
)
SUITE = "".join(
    json.dumps({"id": f"q{i}", "prompt": f"What is {i} plus {i}?", "reference": f"{2 * i}"}) + "\n"
    for i in range(4)
)
GENERAL = "".join(
    json.dumps({"id": f"g{i}", "prompt": f"Name colour number {i}.", "reference": "red"}) + "\n"
    for i in range(4)
)
FAST = {
    "batch_size": 4,
    "micro_batch_size": 4,
    "max_new_tokens": 8,
    "learning_rate": 1e-3,
    "readiness_probe": "off",
}


def _stage(skill: str, file_id: str, suite_id: str, method: str = "sdft", **hp: Any) -> dict[str, Any]:
    hyperparameters = {**FAST, "max_steps": 2, **hp}
    return {"skill": skill, "training_file": file_id, "suites": [suite_id], "method": method,
            "hyperparameters": hyperparameters}  # fmt: skip


def test_two_stage_job_succeeds_and_promotes(service: Any) -> None:
    demos = service.upload("demos.jsonl", DEMOS, "demonstrations")
    # A random tiny model's scores move arbitrarily; wide tolerances make this a test of the flow.
    alpha = service.suite("alpha", SUITE, "contains", tolerance=100)
    beta = service.suite("beta", SUITE.replace("q", "b"), "contains", tolerance=100)
    general = service.suite("general", GENERAL, "contains", tolerance=100)
    service.start_worker()
    job_id = service.create_job(
        {
            "base": "alias:production",
            "stages": [_stage("alpha", demos, alpha), _stage("beta", demos, beta, method="sft")],
            "general_suites": [general],
            "auto_promote": "production",
            "require_improvement": False,
        }
    )
    job = service.wait(job_id, timeout=400)
    assert job["status"] == "succeeded", job["error"]
    first, second = job["candidate_version_ids"]
    with service.client() as c:
        lineage = [v["id"] for v in c.get(f"/v1/models/{second}/lineage").json()["data"]]
        assert lineage == [second, first, service.base_version_id]
        versions = {v: c.get(f"/v1/models/{v}").json() for v in (first, second)}
        assert all(v["status"] == "accepted" and v["gate_report"]["accepted"] for v in versions.values())
        # Stage 2 is gated on stage 1's suite (prior), the general suite (prior) and its own.
        roles = {row["suite"]: row["role"] for row in versions[second]["gate_report"]["rows"]}
        assert roles == {"alpha": "prior", "general": "prior", "beta": "new_skill"}
        assert c.get("/v1/aliases/production").json()["version"] == second
        matrix = c.get("/v1/forgetting", params={"alias": "production"}).json()
        assert len(matrix["versions"]) == 3 and {"alpha", "beta", "general"} <= set(matrix["suites"])
        png = c.get("/v1/forgetting", params={"alias": "production", "format": "png"})
        assert png.content[:8] == b"\x89PNG\r\n\x1a\n"
    kinds = [e["type"] for e in service.events(job_id)]
    assert kinds.count("metrics") == 4 and kinds.count("gate") == 2 and "eval" in kinds


def test_a_rejected_stage_stops_the_job_and_keeps_the_candidate(sqlite_service: Any) -> None:
    svc = sqlite_service
    demos = svc.upload("demos.jsonl", DEMOS, "demonstrations")
    alpha = svc.suite("alpha", SUITE, "contains")
    beta = svc.suite("beta", SUITE.replace("q", "b"), "contains")
    svc.start_worker()
    job_id = svc.create_job(
        {"base": "alias:production", "stages": [_stage("alpha", demos, alpha), _stage("beta", demos, beta)]}
    )
    job = svc.wait(job_id, timeout=300)
    # A random tiny model cannot improve on a suite it scores 0 on: the gate says no.
    assert job["status"] == "rejected" and job["error"]["code"] == "gate_rejected", job
    assert len(job["candidate_version_ids"]) == 1, "stage 2 never ran"
    with svc.client() as c:
        version = c.get(f"/v1/models/{job['candidate_version_ids'][0]}").json()
        assert version["status"] == "rejected" and version["gate_report"]["accepted"] is False
        assert c.get("/v1/aliases/production").json()["version"] == svc.base_version_id


def test_cancel_stops_training_within_a_step(sqlite_service: Any) -> None:
    svc = sqlite_service
    demos = svc.upload("demos.jsonl", DEMOS, "demonstrations")
    alpha = svc.suite("alpha", SUITE, "contains")
    svc.start_worker()
    job_id = svc.create_job(
        {
            "base": "alias:production",
            "stages": [_stage("alpha", demos, alpha, max_steps=500, checkpoint_every=1000)],
        }
    )
    svc.wait(job_id, until=lambda j: (j["step"] or 0) >= 2)
    with svc.client() as c:
        assert c.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
    cancelled_at_step = svc.job(job_id)["step"]
    deadline = time.time() + 60
    while time.time() < deadline and "training stopped" not in json.dumps(svc.events(job_id)):
        time.sleep(0.5)
    job = svc.job(job_id)
    assert job["status"] == "cancelled"
    assert job["step"] <= cancelled_at_step + 1
    assert any("training stopped" in e["message"] for e in svc.events(job_id))
    checkpoints = svc.data_dir / "storage" / "runs" / job_id / "stage-0" / "checkpoints"
    assert any(checkpoints.iterdir()), "a cancelled stage keeps its checkpoint"


def test_kill_9_mid_training_resumes_to_the_same_weights(sqlite_service: Any, tiny_model_dir: Path) -> None:
    svc = sqlite_service
    demos = svc.upload("demos.jsonl", DEMOS, "demonstrations")
    alpha = svc.suite("alpha", SUITE, "contains", tolerance=100)
    # Long enough (tiny steps take tens of milliseconds) that the kill lands mid-stage.
    stage = _stage("alpha", demos, alpha, max_steps=80, checkpoint_every=4, max_new_tokens=16)
    worker = svc.start_worker()
    job_id = svc.create_job({"base": "alias:production", "stages": [stage], "require_improvement": False})
    svc.wait(job_id, until=lambda j: (j["step"] or 0) >= 5, timeout=300)
    svc.kill_worker(worker)  # SIGKILL to the worker and its pool child: no cleanup, no ack
    killed_at = svc.job(job_id)["step"]
    assert killed_at < 80 and svc.job(job_id)["status"] == "running"
    svc.start_worker()
    job = svc.wait(job_id, timeout=400)
    assert job["status"] == "succeeded", job["error"]
    steps = [e["data"]["step"] for e in svc.events(job_id) if e["type"] == "metrics"]
    assert sorted(set(steps)) == list(range(1, 81)), "every step ran; none was skipped"
    assert any("resumed by" in e["message"] for e in svc.events(job_id))

    stored = svc.job(job_id)["stages"][0]["config"]
    reference = run_stage(
        base_dir=tiny_model_dir,
        rows=parse_demonstrations(DEMOS),
        config=parse_stage_config(stored),
        out_dir=svc.data_dir / "reference",
    )
    resumed = svc.data_dir / "storage" / "runs" / job_id / "stage-0" / "final"
    a, b = (
        load_file(str(reference.model_dir / "model.safetensors")),
        load_file(str(resumed / "model.safetensors")),
    )
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-5, msg=name)


def test_jobs_on_one_lineage_never_interleave(sqlite_service: Any) -> None:
    svc = sqlite_service
    demos = svc.upload("demos.jsonl", DEMOS, "demonstrations")
    alpha = svc.suite("alpha", SUITE, "contains")
    svc.start_worker()
    svc.start_worker()  # two workers: the second job could start at once, but must wait its turn
    body = {"base": "alias:production", "stages": [_stage("alpha", demos, alpha, max_steps=6)],
            "require_improvement": False}  # fmt: skip
    first, second = svc.create_job(body), svc.create_job(body)
    a, b = svc.wait(first, timeout=400), svc.wait(second, timeout=400)
    assert {a["status"], b["status"]} == {"succeeded"}
    earlier, later = sorted([a, b], key=lambda j: j["started_at"])
    assert later["started_at"] >= earlier["finished_at"], (earlier, later)


def test_rollout_server_is_not_used_for_a_stage_that_starts_from_a_trained_version(
    sqlite_service: Any,
) -> None:
    """The vLLM rollout server holds the base model only: an SDFT stage on top of a trained version samples
    with transformers.generate (and says so) instead of applying its adapter to the wrong weights. The
    configured server is unreachable, so a stage that still used it would fail the job."""
    service = sqlite_service
    demos = service.upload("demos.jsonl", DEMOS, "demonstrations")
    alpha = service.suite("alpha", SUITE, "contains", tolerance=100)
    beta = service.suite("beta", SUITE.replace("q", "b"), "contains", tolerance=100)
    service.env |= {"SDFT_ROLLOUT_BACKEND": "vllm-server", "SDFT_ROLLOUT_SERVER_URL": "http://127.0.0.1:9"}
    service.start_worker()
    job_id = service.create_job(
        {
            "base": "alias:production",
            "stages": [
                _stage("alpha", demos, alpha, method="sft", lora_rank=4),
                _stage("beta", demos, beta, lora_rank=4),
            ],
            "require_improvement": False,
        }
    )
    job = service.wait(job_id, timeout=400)
    assert job["status"] == "succeeded", job["error"]
    warnings = [e["message"] for e in service.events(job_id) if e["level"] == "warn"]
    assert any("vLLM rollout server serves the base model" in message for message in warnings), warnings
