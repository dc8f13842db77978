"""Is a stage learning? The rules behind the learning diagnostics, torch-free.

While a stage trains, a fixed probe batch of its own demonstrations is measured every few steps
(workers/training/diagnostics.py): the teacher-forced divergence KL(teacher with the demonstration ‖
student) on the demonstration's tokens, the student's NLL of the demonstrations, and its greedy score
on those prompts. A stage reads stalled when neither the divergence nor the score has moved
(`ProbeRecord`). Every step also reports how concentrated its loss is over token positions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

TOP_SHARE = 0.05


def loss_concentration(contributions: Sequence[float], top_share: float = TOP_SHARE) -> float | None:
    """Share of the total loss carried by the top `top_share` of positions (at least one position).

    Near 1: a few tokens carry the signal (what a per-sequence mean dilutes); near `top_share`: the
    loss is spread evenly. None when there is no positive loss to share.
    """
    values = sorted((v for v in contributions if math.isfinite(v) and v > 0), reverse=True)
    total = sum(values)
    if not values or total <= 0:
        return None
    top = max(1, math.ceil(top_share * len(contributions)))
    return sum(values[:top]) / total


@dataclass(frozen=True)
class ProbeRecord:
    """What the learning probe has shown in a stage so far: its readings before the first step and the
    best since. A stage that learned and then drifted back has still learned, so the stall rule reads
    the best, not the latest."""

    baseline: float  # the probe divergence before the first step, nats/token
    baseline_score: float | None  # the greedy score before the first step (None: no grader)
    lowest: float  # the lowest divergence measured so far, the baseline included
    highest_score: float | None  # the highest greedy score so far, the baseline included

    @classmethod
    def start(cls, divergence: float, score: float | None) -> ProbeRecord:
        return cls(divergence, score, divergence, score)

    def updated(self, divergence: float, score: float | None) -> ProbeRecord:
        lowest = min(self.lowest, divergence) if math.isfinite(divergence) else self.lowest
        scores = [s for s in (self.highest_score, score) if s is not None]
        return replace(self, lowest=lowest, highest_score=max(scores) if scores else None)

    def stalled(self, *, done_fraction: float, stall_fraction: float, min_relative_drop: float) -> bool:
        """True when `stall_fraction` of the steps are done, the probe divergence has never fallen by
        `min_relative_drop` of its value before training, and the greedy score has never risen above
        its value before training (a format the student now follows can barely move the divergence)."""
        if done_fraction < stall_fraction or not math.isfinite(self.baseline) or self.baseline <= 0:
            return False  # too early, or nothing to learn: the student already matches the teacher
        if self.baseline_score is not None and (self.highest_score or 0.0) > self.baseline_score:
            return False
        return (self.baseline - self.lowest) / self.baseline < min_relative_drop

    def to_meta(self) -> dict[str, float | None]:
        """The checkpoint's copy, so a resumed stage judges against the same readings."""
        return {
            "probe_baseline": self.baseline,
            "probe_baseline_score": self.baseline_score,
            "probe_lowest": self.lowest,
            "probe_highest_score": self.highest_score,
        }

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> ProbeRecord | None:
        baseline = meta.get("probe_baseline")
        if baseline is None:
            return None
        score = meta.get("probe_baseline_score")
        # Checkpoints written before the record kept only the baseline divergence.
        lowest, highest = meta.get("probe_lowest", baseline), meta.get("probe_highest_score", score)
        return cls(baseline, score, lowest, highest)


def stall_message(
    *,
    stage: int,
    total: int,
    step: int,
    steps: int,
    baseline: float,
    current: float | None,
    baseline_score: float | None,
    method: str,
) -> str:
    """The warning a job emits, once, when the probe first reads stalled; the advice never names the
    method the stage already runs."""
    now = "n/a" if current is None else f"{current:.3f}"
    score = "" if baseline_score is None else f", and its greedy score never rose above {baseline_score:.0%}"
    remedy = "method 'sft_retain'" if method == "sdft" else "more or clearer demonstrations"
    return (
        f"stage {stage}/{total} step {step}/{steps}: the student is not learning the demonstrations: the "
        f"divergence from the teacher on a fixed probe batch of them went from {baseline:.3f} to {now} "
        f"nats/token{score}. More steps are unlikely to help; a higher learning rate, {remedy}, "
        "or a stronger base model may."
    )
