"""SFT, the baseline: cross-entropy on the demonstrations, nothing else."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from workers.rollout.base import RolloutBackend
from workers.training.objectives.base import StageContext, StepOutcome, outcome_of, supervised_term
from workers.training.prompts import PreparedExample
from workers.training.teacher import Teacher


class SftObjective:
    name = "sft"
    rollouts: RolloutBackend | None = None
    reference_teacher: Teacher | None = None

    def __init__(self, ctx: StageContext) -> None:
        self.ctx = ctx

    def accumulate(self, step: int, batch: Sequence[PreparedExample]) -> StepOutcome:
        return outcome_of({"supervised": supervised_term(self.ctx, batch)})

    def after_optimizer_step(self) -> None:
        """Nothing moves besides the student."""

    def state_tensors(self) -> dict[str, Tensor]:
        return {}

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        """Nothing saved, nothing to load."""

    def close(self) -> None:
        """Nothing to release."""
