"""Races through a live server, on SQLite and PostgreSQL: 50 clients promoting with compare-and-set
against the same expected version (one wins each round; the history holds every move and nothing
else), and 100 clients submitting one job with one Idempotency-Key (one job exists, every client gets
it)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import httpx

from .conftest import LiveServer, write_model_dir


def _race(count: int, work: Any) -> list[Any]:
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count

    def run(i: int) -> None:
        barrier.wait()
        results[i] = work(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_racing_compare_and_set_promotions_have_one_winner_per_round(
    live_server: LiveServer, admin: dict[str, str], base_model: dict[str, Any], tmp_path: Path
) -> None:
    url = live_server.url
    other_dir = write_model_dir(tmp_path / "other-model")
    (other_dir / "extra.json").write_text("{}")  # other content: another version
    registered = httpx.post(f"{url}/v1/models", json={"path": str(other_dir), "name": "other"}, headers=admin)
    assert registered.status_code == 201, registered.text
    name = "race-alias"
    httpx.put(
        f"{url}/v1/aliases/{name}", json={"version": base_model["id"]}, headers=admin
    ).raise_for_status()
    current, target = base_model["id"], registered.json()["id"]
    for _round in range(3):

        def promote(i: int, expected: str = current, target: str = target) -> int:
            body = {"version": target, "expected_version": expected, "reason": f"client {i}"}
            with httpx.Client(base_url=url, headers=admin, timeout=60) as client:
                return client.put(f"/v1/aliases/{name}", json=body).status_code

        statuses = _race(50, promote)
        assert sorted(set(statuses)) == [200, 409] and statuses.count(200) == 1, statuses
        current, target = target, current
    history = httpx.get(f"{url}/v1/aliases/{name}/history", params={"limit": 100}, headers=admin).json()
    # The creation plus one move per round: no lost and no extra entries.
    assert len(history["data"]) == 4
    assert {entry["reason"] for entry in history["data"][:3]} <= {f"client {i}" for i in range(50)}


def test_racing_submissions_with_one_key_make_one_job(
    live_server: LiveServer, writer: dict[str, str], job_body: dict[str, Any]
) -> None:
    url = live_server.url
    key = "one-key-for-all-100"

    def submit(_i: int) -> tuple[int, str, bool]:
        with httpx.Client(base_url=url, headers={**writer, "Idempotency-Key": key}, timeout=120) as client:
            for _attempt in range(20):  # a saturated API answers 503 + Retry-After: retry with the key
                response = client.post("/v1/jobs", json=job_body)
                if response.status_code != 503:
                    replayed = response.headers.get("Idempotency-Replayed") == "true"
                    return response.status_code, response.json()["id"], replayed
            return 503, "", False

    results = _race(100, submit)
    assert {status for status, _, _ in results} == {201}, results
    assert len({job_id for _, job_id, _ in results}) == 1
    assert [replayed for _, _, replayed in results].count(False) == 1, "one creation, 99 replays"
