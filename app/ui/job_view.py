"""What a job page shows beyond the job row: the step metrics per stage, and each stage's
readiness-probe verdict and method choice (read from its events)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from app.ui.charts import Chart, metric_chart

# The charted StepMetrics fields (workers/training/loop.py), with their titles.
CHARTED_METRICS: tuple[tuple[str, str], ...] = (
    ("loss", "loss"),
    ("probe_divergence", "probe divergence (nats/token)"),
    ("probe_score", "probe score"),
    ("rollout_tokens_mean", "rollout tokens (mean)"),
)


class EventLike(Protocol):
    type: str
    data: dict[str, Any] | None


@dataclass
class StageNotes:
    """A stage's readiness probe report and method choice (the `probe` and `method` events' data)."""

    probe: dict[str, Any] | None = None
    choice: dict[str, Any] | None = None


def stage_label(index: int, skill: str | None) -> str:
    return f"stage {index + 1}" + (f" ({skill})" if skill else "")


# The events stage_notes reads: every one of them, however long the log.
NOTE_EVENT_TYPES = ("gate", "probe", "method")


def stage_notes(events: Iterable[EventLike]) -> dict[int, StageNotes]:
    """Events oldest first. Probe and method events name no stage: they belong to the stage in progress,
    and stages run in order, each closed by exactly one gate event."""
    notes: dict[int, StageNotes] = {}
    stage = 0
    for event in events:
        if event.type == "gate":
            stage += 1
        elif event.type == "probe":
            notes.setdefault(stage, StageNotes()).probe = event.data or {}
        elif event.type == "method":
            notes.setdefault(stage, StageNotes()).choice = event.data or {}
    return notes


def metric_charts(rows: Iterable[dict[str, Any]]) -> list[Chart]:
    """One chart per charted metric, a line per stage, from the job's metrics rows as the API serves
    them (app.jobs.service.metrics_rows: one row per (stage, step), a step redone after a resume keeps
    its last values, in order), so a resumed stage's line never runs back."""
    series: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for row in rows:
        stage = row.get("stage")
        label = stage_label(stage if isinstance(stage, int) else 0, row.get("skill"))
        for metric, _title in CHARTED_METRICS:
            value = row.get(metric)
            if isinstance(value, int | float) and math.isfinite(value):
                series.setdefault(metric, {}).setdefault(label, []).append((row["step"], float(value)))
    return [
        metric_chart(metric, title, list(series.get(metric, {}).items())) for metric, title in CHARTED_METRICS
    ]
