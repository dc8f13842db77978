"""`sdft demo`: the whole product on the embedded default, start to finish, on one machine.

Bootstraps the embedded service (SmolLM2-135M-Instruct imported and registered as version 1 behind
the alias `production`), starts the API and real Celery workers, uploads the built-in example (two
small skills and the general-knowledge suite, shipped in `app/examples`), and adds the skills one job
each, as a user would: each job trains on `production` with the service's defaults (method auto),
must improve its own skill and keep every earlier skill and general knowledge (the gate), and moves
`production` when it passes. It follows the events, then prints each gate's report with the method
the probe chose and the learning diagnostics, the lineage and the forgetting matrix, and writes its
plot. Everything goes through the same API, worker and gate as production.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from app.examples import DEMO_STAGES, GENERAL_CHOICE_SUITE, SKILLS, load_text
from app.settings import Settings
from workers.local_service import DEFAULT_ALIAS, bootstrap, start_worker, stop_worker

# The service's defaults: method auto (the readiness probe decides), full fine-tuning, the learning
# rate, schedule, rollout length and retention settings `auto` resolves. Set: the step count, so both
# skills fit a 2-core CPU in minutes (16 steps of 4 prompts are 8 passes over the 8 facts).
DEMO_HYPERPARAMETERS: dict[str, Any] = {
    "max_steps": 16,
    "batch_size": 4,
    "micro_batch_size": 4,
}
# General knowledge is gated on the 80 general questions as choices scored by likelihood: at 135M
# a greedy answer flips with any change to the weights (about ten of 80 each way, docs/experiments),
# so a greedy suite's paired interval is about 20 points wide whatever was learned; the choice
# suite's is about 8. The gate allows a lower bound down to 10 points below the parent.
GENERAL_DEMO_TOLERANCE = 10.0


def _check(response: httpx.Response) -> Any:
    if not response.is_success:
        raise RuntimeError(f"{response.request.method} {response.request.url.path}: {response.text}")
    return response.json()


def wait_ready(url: str, api: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if api.poll() is not None:
            raise RuntimeError("the API process exited during start-up")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the API at {url} was not ready after {timeout:.0f} s")


def _upload_suite(
    client: httpx.Client, name: str, file: str, grader: str, tolerance: float, tokens: int
) -> str:
    uploaded = _check(
        client.post(
            "/v1/files",
            data={"purpose": "regression_suite", "grader": grader},
            files={"file": (file, load_text(file).encode(), "application/jsonl")},
        )
    )
    body = {
        "name": name,
        "file": uploaded["id"],
        "grader": grader,
        "tolerance": tolerance,
        "decoding": {"greedy": True, "max_new_tokens": tokens},
    }
    return str(_check(client.post("/v1/suites", json=body))["id"])


def upload_general(client: httpx.Client) -> str:
    general = GENERAL_CHOICE_SUITE
    return _upload_suite(
        client, general.name, general.file, general.grader, GENERAL_DEMO_TOLERANCE, general.max_new_tokens
    )


def submit(client: httpx.Client, name: str, general_id: str) -> str:
    """One job adding one skill on top of `production`, promoted there if its gate passes."""
    skill = SKILLS[name]
    training = _check(
        client.post(
            "/v1/files",
            data={"purpose": "demonstrations", "model": f"alias:{DEFAULT_ALIAS}"},
            files={"file": (skill.train, load_text(skill.train).encode(), "application/jsonl")},
        )
    )
    print(f"  {skill.train}: {training['preflight']['rows']} demonstrations accepted")
    suite = _upload_suite(client, name, skill.test, skill.grader, skill.tolerance, skill.max_new_tokens)
    body = {
        "base": f"alias:{DEFAULT_ALIAS}",
        "stages": [
            {
                "skill": name,
                "training_file": training["id"],
                "suites": [suite],
                "hyperparameters": DEMO_HYPERPARAMETERS,
            }
        ],
        "general_suites": [general_id],
        "auto_promote": DEFAULT_ALIAS,
        # The skill must improve (paired lower bound above zero); earlier skills and general must hold.
        "require_improvement": True,
    }
    return str(_check(client.post("/v1/jobs", json=body))["id"])


def follow(client: httpx.Client, job_id: str) -> dict[str, Any]:
    """Print the job's events as they happen (a compact progress display) until it ends."""
    seen: set[str] = set()
    started = time.time()
    while True:
        job = _check(client.get(f"/v1/jobs/{job_id}"))
        page = _check(client.get(f"/v1/jobs/{job_id}/events", params={"limit": 100}))
        for event in reversed(page["data"]):  # newest first on the wire
            if event["id"] in seen:
                continue
            seen.add(event["id"])
            elapsed = f"[{time.time() - started:6.0f}s]"
            data = event.get("data") or {}
            if event["type"] == "metrics":
                probe = (
                    ""
                    if data.get("probe_divergence") is None
                    else (
                        f"  probe kl {data['probe_divergence']:.3f} (from {data['probe_baseline']:.3f})"
                        f"  probe score {data['probe_score'] if data['probe_score'] is not None else '-'}"
                    )
                )
                print(
                    f"{elapsed} {event['message']} [{data['method']}]  loss {data['loss']:.4f}{probe}  "
                    f"{data['seconds']:.1f} s/step",
                    flush=True,
                )
            else:
                print(f"{elapsed} {event['message']}", flush=True)
        if job["status"] in ("succeeded", "rejected", "failed", "cancelled"):
            return dict(job)
        time.sleep(1.0)


def render_gate(report: dict[str, Any]) -> str:
    lines = [
        f"{'suite':<16} {'role':<9} {'n':>3} {'parent':>7} {'cand':>7} {'delta':>7}  {'95% CI':<17} result"
    ]
    for row in report["rows"]:
        ci = "-" if row["ci_low"] is None else f"[{row['ci_low']:+.1f}, {row['ci_high']:+.1f}]"
        result = "PASS" if row["passed"] else "FAIL"
        lines.append(
            f"{row['suite']:<16} {row['role']:<9} {row['n']:>3} {row['parent_score']:>7.1f} "
            f"{row['candidate_score']:>7.1f} {row['delta']:>+7.1f}  {ci:<17} {result}"
        )
    lines.append(f"verdict: {'ACCEPTED' if report['accepted'] else 'REJECTED'}: {report['reason']}")
    return "\n".join(lines)


def render_matrix(matrix: dict[str, Any]) -> str:
    suites = matrix["suites"]
    lines = [f"{'version':<34}" + "".join(f"{s:>18}" for s in suites)]
    for version, row in zip(matrix["versions"], matrix["cells"], strict=True):
        cells = "".join(
            f"{'-':>18}" if c is None else f"{c['score']:>6.1f} [{c['ci_low']:>3.0f},{c['ci_high']:>4.0f}]"
            for c in row
        )
        lines.append(f"{version['label'][:33]:<34}{cells}")
    return "\n".join(lines)


def report_job(client: httpx.Client, job: dict[str, Any]) -> None:
    print(f"\njob {job['id']}: {job['status']}" + (f" ({job['error']['message']})" if job["error"] else ""))
    candidates = job["candidate_version_ids"]
    for index, version_id in enumerate(candidates):
        version = _check(client.get(f"/v1/models/{version_id}"))
        print(f"\ngate, stage {index + 1} ({version['skill']}), candidate {version_id}:")
        training = version.get("training") or {}
        choice = training.get("choice")
        print(f"method: {training.get('method')}" + (f" ({choice['reason']})" if choice else ""))
        diagnostics = training.get("diagnostics") or {}
        if diagnostics.get("probe_baseline") is not None:
            state = "stalled" if diagnostics["learning_stalled"] else "learning"
            scores = [diagnostics.get("probe_baseline_score"), diagnostics["probe_score"]]
            print(
                f"learning diagnostics: probe divergence {diagnostics['probe_baseline']:.3f} -> "
                f"{diagnostics['probe_divergence']:.3f} nats/token, probe score "
                f"{' -> '.join('-' if s is None else f'{s:.2f}' for s in scores)}, {state}"
            )
        if version.get("gate_report"):
            print(render_gate(version["gate_report"]))


def report_lineage(client: httpx.Client, last: str, out_dir: Path) -> None:
    lineage = _check(client.get(f"/v1/models/{last}/lineage"))["data"]
    print("\nlineage (newest first):")
    for version in lineage:
        print(f"  {version['id']}  {version.get('skill') or 'base'}  {version['status']}")
    matrix = _check(client.get("/v1/forgetting", params={"version": last}))
    print("\nforgetting matrix (score, 95% CI, points):")
    print(render_matrix(matrix))
    png = client.get("/v1/forgetting", params={"version": last, "format": "png"})
    if png.is_success:
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / "forgetting.png"
        path.write_bytes(png.content)
        print(f"\nplot: {path}")
    alias = _check(client.get(f"/v1/aliases/{DEFAULT_ALIAS}"))
    print(f"alias {DEFAULT_ALIAS} -> {alias['version']}")


def run_demo(settings: Settings, port: int) -> int:
    started = time.time()
    print("sdft demo: preparing the embedded service (first run imports SmolLM2-135M-Instruct)")
    booted = bootstrap(settings)
    token = booted.token_path.read_text().strip()
    url = f"http://127.0.0.1:{port}"
    api_log = (settings.data_dir / "api.log").open("ab")
    command = [sys.executable, "-m", "uvicorn", "--factory", "app.main:create_app", "--port", str(port)]
    api = subprocess.Popen(command, stdout=api_log, stderr=subprocess.STDOUT)
    worker = start_worker(settings)
    jobs: list[dict[str, Any]] = []
    try:
        wait_ready(url, api)
        print(f"service up at {url} (training worker pid {worker.trainer.pid}); submitting the example job")
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as client:
            general_id = upload_general(client)
            for name in DEMO_STAGES:
                job_id = submit(client, name, general_id)
                print(
                    f"job {job_id}: add the skill {name} to {DEFAULT_ALIAS}, "
                    "gated on it and on general knowledge (general-choice)"
                )
                jobs.append(follow(client, job_id))
                report_job(client, jobs[-1])
            last = next(
                (j["candidate_version_ids"][-1] for j in reversed(jobs) if j["candidate_version_ids"]), None
            )
            if last is not None:
                report_lineage(client, last, settings.data_dir / "demo")
    finally:
        stop_worker(worker)
        api.terminate()
        api.wait(timeout=30)
    print(f"\nsdft demo finished in {time.time() - started:.0f} s")
    return 0 if all(job["status"] in ("succeeded", "rejected") for job in jobs) else 1
