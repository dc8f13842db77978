"""SDFT, the paper's method: the student samples on-policy, the teacher (the same network with the
demonstration in its prompt; an EMA of the student, frozen, or live) scores those tokens, and the
student matches the teacher per token (forward KL over the full vocabulary by default)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from app.evaluation.leakage import default_leakage_phrases
from workers.rollout.base import RolloutBackend
from workers.training.objectives.base import (
    DistillPrompt,
    OnPolicyDistillation,
    StageContext,
    StepOutcome,
    outcome_of,
)
from workers.training.prompts import PreparedExample
from workers.training.teacher import Teacher


class SdftObjective:
    name = "sdft"

    def __init__(self, ctx: StageContext, teacher: Teacher, backend: RolloutBackend) -> None:
        self.teacher = teacher
        self.reference_teacher: Teacher | None = teacher
        self.rollouts: RolloutBackend | None = backend
        self.leak_phrases = default_leakage_phrases(ctx.config.teacher_template)
        self.distillation = OnPolicyDistillation(
            ctx,
            teacher,
            backend,
            max_new_tokens=ctx.max_new_tokens,
            samples_per_prompt=ctx.config.rollouts_per_prompt,
            skip_first=ctx.config.skip_first_tokens,
        )

    def accumulate(self, step: int, batch: Sequence[PreparedExample]) -> StepOutcome:
        prompts = [DistillPrompt(e.student_prompt_ids, e.teacher_prompt_ids) for e in batch]
        return outcome_of(
            {"distillation": self.distillation.run(step, prompts)}, leak_phrases=self.leak_phrases
        )

    def after_optimizer_step(self) -> None:
        self.teacher.update()

    def state_tensors(self) -> dict[str, Tensor]:
        return self.teacher.state_tensors()

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        self.teacher.load_state_tensors(tensors)

    def close(self) -> None:
        self.distillation.backend.close()
