"""Prometheus text exposition, written by hand (no client library): jobs by status, time spent per
status (from job_transition), broker queue depth."""

from __future__ import annotations

import logging

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.jobs.models import Job, JobTransition
from app.jobs.states import JobStatus
from app.queue import TaskProducer

log = logging.getLogger(__name__)


def _labels(**labels: str) -> str:
    inner = ",".join(f'{key}="{value}"' for key, value in labels.items())
    return "{" + inner + "}"


def render_metrics(session: Session, producer: TaskProducer) -> str:
    lines: list[str] = []
    by_status = select(Job.status, func.count()).group_by(Job.status)
    counts: dict[str, int] = dict(session.execute(by_status).all())
    lines += ["# HELP sdft_jobs Jobs by status.", "# TYPE sdft_jobs gauge"]
    lines += [f"sdft_jobs{_labels(status=str(s))} {counts.get(str(s), 0)}" for s in JobStatus]

    durations = session.execute(
        select(JobTransition.from_status, func.sum(JobTransition.seconds_in_from), func.count()).group_by(
            JobTransition.from_status
        )
    )
    lines += [
        "# HELP sdft_stage_duration_seconds Seconds jobs spent in a status before leaving it "
        "(running = training, evaluating = suites and gate).",
        "# TYPE sdft_stage_duration_seconds summary",
    ]
    for status, total, count in durations:
        lines.append(f"sdft_stage_duration_seconds_sum{_labels(status=status)} {int(total or 0)}")
        lines.append(f"sdft_stage_duration_seconds_count{_labels(status=status)} {count}")

    lines += [
        "# HELP sdft_queue_depth Messages waiting in the broker, per queue.",
        "# TYPE sdft_queue_depth gauge",
    ]
    try:
        depths = producer.queue_depths()
    except Exception as exc:  # best effort: a scrape must not fail because the broker is down
        log.warning("queue depth unavailable: %s", exc)
        lines.append(f"# queue depth unavailable: {type(exc).__name__}")
        depths = {"default": 0}
    lines += [f"sdft_queue_depth{_labels(queue=queue)} {depth}" for queue, depth in depths.items()]
    return "\n".join(lines) + "\n"
