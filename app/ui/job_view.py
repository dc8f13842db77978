"""What a job page shows beyond the job row, read from its events: the step metrics per stage, and
each stage's readiness-probe verdict and method choice."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
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


@dataclass
class JobTimeline:
    notes: dict[int, StageNotes] = field(default_factory=dict)
    # metric -> stage label -> [(step, value)]
    series: dict[str, dict[str, list[tuple[float, float]]]] = field(default_factory=dict)

    def charts(self) -> list[Chart]:
        return [
            metric_chart(metric, title, list(self.series.get(metric, {}).items()))
            for metric, title in CHARTED_METRICS
        ]


def stage_label(index: int, skill: str | None) -> str:
    return f"stage {index + 1}" + (f" ({skill})" if skill else "")


def read_timeline(events: Iterable[EventLike]) -> JobTimeline:
    """Events oldest first. Probe and method events name no stage: they belong to the stage in progress,
    and stages run in order, each closed by exactly one gate event."""
    timeline = JobTimeline()
    stage = 0
    for event in events:
        data = event.data or {}
        if event.type == "gate":
            stage += 1
        elif event.type == "probe":
            timeline.notes.setdefault(stage, StageNotes()).probe = data
        elif event.type == "method":
            timeline.notes.setdefault(stage, StageNotes()).choice = data
        elif event.type == "metrics" and isinstance(data.get("step"), int):
            label = stage_label(int(data.get("stage", stage)), data.get("skill"))
            for metric, _title in CHARTED_METRICS:
                value = data.get(metric)
                if isinstance(value, int | float) and math.isfinite(value):
                    by_stage = timeline.series.setdefault(metric, {})
                    by_stage.setdefault(label, []).append((data["step"], float(value)))
    return timeline
