"""Learn off-policy, keep on-policy: SFT on the demonstrations, plus on-policy distillation from the
frozen parent (no demonstration in its prompt) on prompts of the retention pool.

- `sft_retain`: both terms in every step, the distillation weighted by `retention_weight`.
- `sft_restore`: SFT alone, then for the last `restore_fraction` of the steps the distillation alone
  ("learn, then restore", the recipe of on-policy distillation for restoring behaviour after
  fine-tuning on new knowledge).

The pool is the lineage's earlier training prompts plus the shipped general pool, never a prompt of a
regression suite (app/training/retention_pool.py checks that by hash); pool prompts per step are a
pure function of the step, like the demonstrations, so a resumed stage samples the same ones.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor

from workers.rollout.base import RolloutBackend
from workers.training.objectives.base import (
    DistillPrompt,
    OnPolicyDistillation,
    StageContext,
    StepOutcome,
    TermResult,
    outcome_of,
    supervised_term,
)
from workers.training.prompts import PreparedExample
from workers.training.schedule import batch_indices
from workers.training.teacher import Teacher

# Seeds the pool's order and its rollouts apart from the demonstrations'.
POOL_SEED_OFFSET = 7


class RetentionObjective:
    reference_teacher: Teacher | None = None

    def __init__(
        self,
        ctx: StageContext,
        parent: Teacher,
        backend: RolloutBackend,
        pool: Sequence[tuple[int, ...]],
        *,
        restore_from_step: int | None,
    ) -> None:
        """restore_from_step None: both terms every step (sft_retain); else SFT before that step and
        the distillation alone from it on (sft_restore)."""
        if not pool:
            raise ValueError("the retention methods need a non-empty retention prompt pool")
        self.name = "sft_retain" if restore_from_step is None else "sft_restore"
        self.ctx = ctx
        self.parent = parent
        self.rollouts: RolloutBackend | None = backend
        self.pool = [DistillPrompt(ids, ids) for ids in pool]
        self.restore_from_step = restore_from_step
        self.distillation = OnPolicyDistillation(
            ctx,
            parent,
            backend,
            max_new_tokens=ctx.config.retention_max_new_tokens,
            samples_per_prompt=1,
            skip_first=0,
            seed_offset=POOL_SEED_OFFSET,
        )

    @classmethod
    def restore_start(cls, max_steps: int, restore_fraction: float) -> int:
        """The first restore step: the last `restore_fraction` of the steps, at least one of each phase."""
        restore_steps = min(max_steps - 1, max(1, math.ceil(restore_fraction * max_steps)))
        return max_steps - restore_steps

    def pool_prompts(self, step: int) -> list[DistillPrompt]:
        rows = batch_indices(
            step,
            self.ctx.resolved.retention_batch_size,
            len(self.pool),
            self.ctx.config.seed + POOL_SEED_OFFSET,
        )
        return [self.pool[i] for i in rows]

    def accumulate(self, step: int, batch: Sequence[PreparedExample]) -> StepOutcome:
        terms: dict[str, TermResult] = {}
        restoring = self.restore_from_step is not None and step >= self.restore_from_step
        if not restoring:
            terms["supervised"] = supervised_term(self.ctx, batch)
        if self.restore_from_step is None or restoring:
            weight = self.ctx.config.retention_weight if self.restore_from_step is None else 1.0
            terms["retention"] = self.distillation.run(step, self.pool_prompts(step), weight=weight)
        return outcome_of(terms)

    def after_optimizer_step(self) -> None:
        """The parent is frozen."""

    def state_tensors(self) -> dict[str, Tensor]:
        return {}

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        """Nothing saved, nothing to load."""

    def close(self) -> None:
        self.distillation.backend.close()
