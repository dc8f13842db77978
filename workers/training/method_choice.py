"""Before a stage trains: run the teacher-readiness probe when the method needs it, and turn
`method: auto` into a concrete method (the rule is `app.training.readiness.choose_method`).

The job pipeline, `sdft train` and the experiment all come here, so `auto` means the same everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.contracts.demonstrations import Demonstration
from app.contracts.rollout_settings import RolloutSettings
from app.training.readiness import PROBE_GRADERS, MethodChoice, ReadinessReport, choose_method
from app.training.stage_config import AUTO_FALLBACK_METHOD, StageConfig
from workers.models.loading import load_model, load_tokenizer
from workers.models.placement import Placement, default_placement
from workers.training.readiness import teacher_readiness

# The probe's greedy answers need not be long: the answer comes first in every demonstration we know.
PROBE_MAX_NEW_TOKENS = 128


@dataclass(frozen=True)
class StageMethod:
    config: StageConfig  # with a concrete method
    choice: MethodChoice | None  # why `auto` chose it (None when the method was given)
    readiness: ReadinessReport | None  # None when no probe ran


def probe_grader(grader: str | None) -> str:
    """The grader the probe reads demonstrations with: the skill's own where it can, else `contains`."""
    return grader if grader in PROBE_GRADERS else "contains"


def readiness_report(
    parent_dir: Path,
    rows: Sequence[Demonstration],
    config: StageConfig,
    *,
    grader: str | None,
    grader_options: Mapping[str, Any] | None,
    max_new_tokens: int,
    placement: Placement | None = None,
    engine: str = "transformers",
    rollout: RolloutSettings | None = None,
) -> ReadinessReport:
    """The probe on the parent; `engine` (with `rollout` its settings) generates its answers, as an
    evaluation of the parent would (workers/evaluation/engine.py)."""
    placement = placement or default_placement()
    model = load_model(parent_dir, placement)
    try:
        return teacher_readiness(
            model,
            load_tokenizer(parent_dir),
            rows,
            grader=probe_grader(grader),
            grader_options=grader_options if probe_grader(grader) == grader else None,
            config=config,
            max_new_tokens=max_new_tokens,
            placement=placement,
            engine=engine,
            rollout=rollout,
        )
    finally:
        del model


def stage_method(
    parent_dir: Path,
    rows: Sequence[Demonstration],
    config: StageConfig,
    *,
    grader: str | None,
    grader_options: Mapping[str, Any] | None = None,
    max_new_tokens: int = PROBE_MAX_NEW_TOKENS,
    placement: Placement | None = None,
    engine: str = "transformers",
    rollout: RolloutSettings | None = None,
) -> StageMethod:
    """The method this stage trains with, and the probe behind it.

    auto: probe, then `choose_method`; sdft: probe unless readiness_probe is 'off' (the caller enforces
    or warns); any other method: no probe."""
    wants_probe = config.method == "auto" or (config.method == "sdft" and config.readiness_probe != "off")
    if not wants_probe:
        return StageMethod(config, None, None)
    report = readiness_report(
        parent_dir,
        rows,
        config,
        grader=grader,
        grader_options=grader_options,
        max_new_tokens=max_new_tokens,
        placement=placement,
        engine=engine,
        rollout=rollout,
    )
    if config.method != "auto":
        return StageMethod(config, None, report)
    choice = choose_method(report, AUTO_FALLBACK_METHOD)
    return StageMethod(config.model_copy(update={"method": choice.method}), choice, report)
