"""API latency under load and idempotent submissions, against `sdft up` on loopback.

For each database (SQLite, the embedded default; PostgreSQL with Redis as broker, the production
shape) this starts `sdft up --no-worker` on a fresh data directory (no worker, so submitted jobs wait
in the queue instead of training on the same two cores), then:

1. open-loop load for --duration seconds at each rate (default 50 and 200 requests/s): requests leave
   on a fixed schedule whether or not earlier ones returned, so a slow server shows up as latency,
   not as a lower rate. Measured: GET /v1/jobs/{id}, POST /v1/jobs (a distinct Idempotency-Key each),
   and the peer, GET /healthz (no database), at the same rate in the same run.
2. once the server is idle again, 1,000 concurrent POST /v1/jobs with distinct Idempotency-Keys (a
   503 with Retry-After is retried after that wait, with the same key, as a client should), then the
   same 1,000 again: the jobs table must hold exactly one job per key (created / lost / duplicated =
   1000 / 0 / 0) and the second wave must replay every one of them.

    python bench/api_load.py [--databases sqlite,postgres] [--duration 30] [--rates 50,200]
                             [--burst 1000] [--api-workers N] [--out FILE.json]

Prints a table; the figures go in docs/benchmarks.md. Target: p99 of the GET under 20 ms at 200/s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from raw_http import TRANSPORT_ERRORS, RawClient, Reply  # noqa: E402  (bench/ is on sys.path when run as a script)

from app.examples import SKILLS, load_text  # noqa: E402
from workers.demo import wait_ready  # noqa: E402
from workers.models.smollm2 import DEFAULT_NAME, default_model_dir  # noqa: E402

PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/14"
MAX_IN_FLIGHT = 64
BURST_ATTEMPTS = 30
SETTLED_MS = 50.0
GRACE_SECONDS = 15.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


class Service:
    """`sdft up --no-worker` on a fresh data directory, with SQLite or PostgreSQL behind it."""

    def __init__(self, database: str, api_workers: int | None) -> None:
        self.database = database
        self.api_workers = api_workers
        self.data_dir = Path(tempfile.mkdtemp(prefix=f"sdft-load-{database}-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "SDFT_DATA_DIR": str(self.data_dir)}
        self.pg_name: str | None = None
        if database == "postgres":
            self.pg_name = f"sdft_load_{uuid.uuid4().hex[:8]}"
            admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
            with admin.connect() as connection:
                connection.execute(sa.text(f'CREATE DATABASE "{self.pg_name}"'))
            admin.dispose()
            self.database_url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{self.pg_name}"
            self.env |= {"SDFT_DATABASE_URL": self.database_url, "SDFT_BROKER_URL": REDIS_URL}
        else:
            self.database_url = f"sqlite:///{self.data_dir / 'sdft.sqlite'}"
        # The embedded base, already imported: link it instead of importing again.
        models = self.data_dir / "models"
        models.mkdir()
        (models / DEFAULT_NAME).symlink_to(default_model_dir())
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Service:
        log = (self.data_dir / "up.log").open("wb")
        command = [str(Path(sys.executable).parent / "sdft"), "up", "--no-worker", "--port", str(self.port)]
        if self.api_workers is not None:
            command += ["--api-workers", str(self.api_workers)]
        self.process = subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            wait_ready(self.url, self.process, timeout=180)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}: {(self.data_dir / 'up.log').read_text()[-2000:]}") from None
        self.token = (self.data_dir / "admin.token").read_text().strip()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:  # stuck on a locked database: do not mask the real error
                self.process.kill()
                self.process.wait()
        if self.pg_name is not None:
            admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
            with admin.connect() as connection:
                connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{self.pg_name}" WITH (FORCE)'))
            admin.dispose()
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def job_counts(self, prefix: str) -> tuple[int, int, int]:
        """(keys with a job, keys with more than one job, jobs) among Idempotency-Keys with prefix."""
        engine = sa.create_engine(self.database_url)
        try:
            with engine.connect() as connection:
                rows = connection.execute(
                    sa.text(
                        "SELECT idempotency_key, count(*) FROM job WHERE idempotency_key LIKE :p "
                        "GROUP BY idempotency_key"
                    ),
                    {"p": f"{prefix}%"},
                ).all()
        finally:
            engine.dispose()
        return len(rows), sum(1 for _, n in rows if n > 1), sum(n for _, n in rows)


def job_body(client: httpx.Client) -> dict[str, Any]:
    skill = SKILLS["format-demo"]
    training = client.post(
        "/v1/files",
        data={"purpose": "demonstrations"},
        files={"file": (skill.train, load_text(skill.train).encode(), "application/jsonl")},
    )
    training.raise_for_status()
    suite_file = client.post(
        "/v1/files",
        data={"purpose": "regression_suite", "grader": skill.grader},
        files={"file": (skill.test, load_text(skill.test).encode(), "application/jsonl")},
    )
    suite_file.raise_for_status()
    suite = client.post(
        "/v1/suites",
        json={"name": skill.name, "file": suite_file.json()["id"], "grader": skill.grader, "tolerance": 5.0},
    )
    suite.raise_for_status()
    stage = {"skill": skill.name, "training_file": training.json()["id"], "suites": [suite.json()["id"]]}
    return {"base": "alias:production", "stages": [stage]}


async def open_loop(
    send: Callable[[RawClient], Awaitable[Reply]],
    client: RawClient,
    rate: float,
    duration: float,
    expect: int,
) -> dict[str, float]:
    """Send at `rate` per second for `duration` seconds on a fixed schedule; latency per request.

    Latency runs from the request's scheduled time, not from when a connection was free: a server
    that falls behind shows it as latency (no coordinated omission). At most MAX_IN_FLIGHT requests
    are open at once (httpx's pool slows down quadratically with thousands of queued requests, which
    made the client, not the server, the bottleneck)."""
    latencies: list[float] = []
    failures: Counter[str] = Counter()
    gate = asyncio.Semaphore(MAX_IN_FLIGHT)

    async def one(scheduled: float) -> None:
        async with gate:
            try:
                response = await send(client)
                if response.status != expect:
                    failures[str(response.status)] += 1
                    return
            except TRANSPORT_ERRORS as exc:
                failures[type(exc).__name__] += 1
                return
        latencies.append((time.perf_counter() - scheduled) * 1000)

    total = int(rate * duration)
    start = time.perf_counter()
    tasks = []
    for index in range(total):
        scheduled = start + index / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(scheduled)))
    # Bounded: what has not answered GRACE_SECONDS after the last send counts as unanswered.
    _, pending = await asyncio.wait(tasks, timeout=GRACE_SECONDS)
    for task in pending:
        task.cancel()
    if pending:
        failures["unanswered"] += len(pending)
    elapsed = time.perf_counter() - start
    return {
        "sent": total,
        "ok": len(latencies),
        "errors": sum(failures.values()),
        "failures": dict(failures),
        "achieved_rps": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
    }


async def settle(client: RawClient, path: str, timeout: float = 120.0) -> None:
    """Wait until the server answers `path` within SETTLED_MS: a saturated phase leaves requests queued
    on the server after the client gave up on them, and the burst must start on an idle server."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        with contextlib.suppress(*TRANSPORT_ERRORS):
            await client.get(path)
            if (time.perf_counter() - started) * 1000 < SETTLED_MS:
                return
        await asyncio.sleep(0.5)
    raise RuntimeError(f"the server still answers {path} slowly after {timeout:.0f} s")


async def burst(client: RawClient, body: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    """Every key submitted at once, each retried as a client should: on 503 with Retry-After, with the
    same Idempotency-Key, up to BURST_ATTEMPTS times. Failures are counted by status (or exception)."""
    retries = 0
    failures: Counter[str] = Counter()

    async def submit(key: str) -> str:
        nonlocal retries
        for _attempt in range(BURST_ATTEMPTS):
            try:
                response = await client.post("/v1/jobs", body, headers={"Idempotency-Key": key})
            except TRANSPORT_ERRORS as exc:
                failures[type(exc).__name__] += 1
                return "failed"
            if response.status == 201:
                return "replayed" if response.headers.get("idempotency-replayed") == "true" else "created"
            retry_after = response.headers.get("retry-after")
            if response.status != 503 or retry_after is None:
                break
            retries += 1
            await asyncio.sleep(float(retry_after))
        failures[str(response.status)] += 1
        return "failed"

    outcomes = Counter(await asyncio.gather(*(submit(key) for key in keys)))
    return {
        "created": outcomes["created"],
        "replayed": outcomes["replayed"],
        "failed": outcomes["failed"],
        "retries_after_503": retries,
        "failures": dict(failures),
    }


async def measure(service: Service, rates: list[float], duration: float, burst_size: int) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {service.token}"}
    with httpx.Client(base_url=service.url, headers=headers, timeout=60) as client:
        body = job_body(client)
        seeded = client.post("/v1/jobs", json=body)
        seeded.raise_for_status()
        job_id = seeded.json()["id"]
    results: dict[str, Any] = {"load": []}
    client = RawClient(service.url, headers, timeout=60)
    try:
        for _ in range(20):  # warm the server's code paths and the connection pool
            await client.get(f"/v1/jobs/{job_id}")
        # Reads first, at every rate, then writes: a saturated write phase leaves work behind (a
        # backlog, PostgreSQL's autovacuum, SQLite's WAL checkpoint) that would land in a later phase.
        for name, send, expect in (
            ("GET /healthz (peer)", lambda c: c.get("/healthz"), 200),
            ("GET /v1/jobs/{id}", lambda c: c.get(f"/v1/jobs/{job_id}"), 200),
            (
                "POST /v1/jobs",
                lambda c: c.post("/v1/jobs", body, headers={"Idempotency-Key": uuid.uuid4().hex}),
                201,
            ),
        ):
            for rate in rates if duration > 0 else []:
                row = await open_loop(send, client, rate, duration, expect)
                results["load"].append({"endpoint": name, "rate": rate, **row})
                print(
                    f"  {service.database:<8} {name:<22} {rate:>5.0f}/s  p50 {row['p50_ms']:6.1f} ms  "
                    f"p99 {row['p99_ms']:6.1f} ms  errors {row['errors']} {row['failures'] or ''}",
                    flush=True,
                )
        await settle(client, f"/v1/jobs/{job_id}")
        prefix = f"burst-{uuid.uuid4().hex[:6]}-"
        keys = [f"{prefix}{i}" for i in range(burst_size)]
        started = time.perf_counter()
        first = await burst(client, body, keys)
        seconds = time.perf_counter() - started
        second = await burst(client, body, keys)
    finally:
        await client.close()
    with_job, duplicated, jobs = service.job_counts(prefix)
    results["burst"] = {
        "keys": burst_size,
        "seconds": seconds,
        "first_wave": first,
        "second_wave": second,
        "created": with_job,
        "lost": burst_size - with_job,
        "duplicated": duplicated,
        "jobs": jobs,
    }
    return results


def describe_errors(row: dict[str, Any]) -> str:
    """`0`, or the count with its causes: `12 (503: 10, ReadTimeout: 2)`."""
    if not row["errors"]:
        return "0"
    causes = ", ".join(f"{cause}: {count}" for cause, count in sorted(row["failures"].items()))
    return f"{row['errors']} ({causes})"


def render(all_results: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| database | endpoint | rate/s | achieved/s | p50 ms | p99 ms | errors | p99 / peer p99 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for database, results in all_results.items():
        peers = {row["rate"]: row["p99_ms"] for row in results["load"] if "peer" in row["endpoint"]}
        for row in results["load"]:
            ratio = "" if "peer" in row["endpoint"] else f"{row['p99_ms'] / peers[row['rate']]:.1f}"
            lines.append(
                f"| {database} | {row['endpoint']} | {row['rate']:.0f} | {row['achieved_rps']:.0f} | "
                f"{row['p50_ms']:.1f} | {row['p99_ms']:.1f} | {describe_errors(row)} | {ratio} |"
            )
    lines += [
        "",
        "| database | concurrent submissions | created | lost | duplicated | seconds | 503 retries | "
        "replayed on resend |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for database, results in all_results.items():
        b = results["burst"]
        lines.append(
            f"| {database} | {b['keys']} | {b['created']} | {b['lost']} | {b['duplicated']} | "
            f"{b['seconds']:.1f} | {b['first_wave']['retries_after_503']} | {b['second_wave']['replayed']} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--databases", default="sqlite,postgres")
    parser.add_argument(
        "--duration", type=float, default=30.0, help="seconds per rate and endpoint (0: the burst only)"
    )
    parser.add_argument("--rates", default="50,200")
    parser.add_argument("--burst", type=int, default=1000)
    parser.add_argument("--api-workers", type=int, help="API processes (default: sdft up's default)")
    parser.add_argument("--out", help="write the raw figures as JSON here")
    args = parser.parse_args()
    rates = [float(rate) for rate in args.rates.split(",")]
    all_results = {}
    for database in args.databases.split(","):
        if database not in ("sqlite", "postgres"):
            parser.error(f"--databases: unknown database {database!r} (sqlite, postgres)")
        print(f"{database}: starting sdft up --no-worker", flush=True)
        with Service(database, args.api_workers) as service:
            all_results[database] = asyncio.run(measure(service, rates, args.duration, args.burst))
    print()
    print(render(all_results))
    if args.out:
        Path(args.out).write_text(json.dumps(all_results, indent=1) + "\n")
    failed = [db for db, r in all_results.items() if (r["burst"]["lost"], r["burst"]["duplicated"]) != (0, 0)]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
