"""Is a stage learning? The rules behind the learning diagnostics, torch-free.

While a stage trains, a fixed probe batch of its own demonstrations is measured every few steps
(workers/training/diagnostics.py): the teacher-forced divergence KL(teacher with the demonstration ‖
student) on the demonstration's tokens, which must fall if anything is learned; the student's NLL of
the demonstrations; and its greedy score on those prompts. Every step also reports how concentrated
its loss is over token positions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

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


def probe_stalled(
    baseline: float,
    current: float,
    *,
    done_fraction: float,
    stall_fraction: float,
    min_relative_drop: float,
) -> bool:
    """True when `stall_fraction` of the steps are done and the probe divergence has not fallen by at
    least `min_relative_drop` of its value before training."""
    if done_fraction < stall_fraction or not math.isfinite(baseline) or not math.isfinite(current):
        return False
    if baseline <= 0:
        return False  # nothing to learn: the student already matches the teacher
    return (baseline - current) / baseline < min_relative_drop


def stall_message(
    *,
    stage: int,
    total: int,
    step: int,
    steps: int,
    baseline: float,
    current: float | None,
    method: str,
) -> str:
    """The warning a job emits, once, when `probe_stalled` first holds; the advice never names the
    method the stage already runs."""
    now = "n/a" if current is None else f"{current:.3f}"
    remedy = "method 'sft_retain'" if method == "sdft" else "more or clearer demonstrations"
    return (
        f"stage {stage}/{total} step {step}/{steps}: the student is not learning the demonstrations: the "
        f"divergence from the teacher on a fixed probe batch of them went from {baseline:.3f} to {now} "
        f"nats/token. More steps are unlikely to help; a higher learning rate, {remedy}, "
        "or a stronger base model may."
    )
