"""Training objectives, one file per method, chosen once per stage by `build_objective`.

To add a method: write its objective (the `Objective` protocol in base.py, built from the terms
there), add its name to `app/training/stage_config.py` (`Method`) and a builder to `BUILDERS`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from peft import PeftModel

from workers.models.loading import load_model
from workers.rollout.base import BackendFactory, RolloutShape
from workers.rollout.factory import transformers_backend
from workers.training.objectives.base import Objective, StageContext, StepOutcome
from workers.training.objectives.retention import RetentionObjective
from workers.training.objectives.sdft import SdftObjective
from workers.training.objectives.sft import SftObjective
from workers.training.teacher import Teacher, build_teacher

__all__ = ["BUILDERS", "Objective", "StageContext", "StepOutcome", "build_objective"]


def _teacher(ctx: StageContext, kind: str, base_dir: Path) -> Teacher:
    """The stage's teacher; a frozen one is the parent itself (the adapter switched off under LoRA)."""
    needs_copy = kind == "ema" or (kind == "frozen" and not isinstance(ctx.student, PeftModel))
    base_copy = load_model(base_dir, ctx.placement) if needs_copy else None
    dtype = torch.bfloat16 if ctx.placement.is_cuda else torch.float32
    return build_teacher(kind, ctx.student, base_copy, ctx.config.ema_rate, dtype)


def _rollout_shape(ctx: StageContext, sequences: int, sequence_tokens: int) -> RolloutShape:
    """The most one `generate` of the stage asks its rollout engine for: the objective's rollouts, or
    the learning probe's greedy answers to its rows' student prompts, which the engine decodes too
    (workers/training/diagnostics.py)."""
    if ctx.config.probe_rows == 0:
        return RolloutShape(sequences, sequence_tokens)
    return RolloutShape(
        max(sequences, ctx.config.probe_rows),
        max(sequence_tokens, ctx.longest_prompt_tokens + ctx.max_new_tokens),
    )


def _sft(
    ctx: StageContext, base_dir: Path, factory: BackendFactory, pool: Sequence[tuple[int, ...]]
) -> Objective:
    return SftObjective(ctx)


def _sdft(
    ctx: StageContext, base_dir: Path, factory: BackendFactory, pool: Sequence[tuple[int, ...]]
) -> Objective:
    teacher = _teacher(ctx, ctx.config.teacher, base_dir)
    shape = _rollout_shape(
        ctx,
        ctx.resolved.batch_size * ctx.config.rollouts_per_prompt,
        ctx.longest_prompt_tokens + ctx.max_new_tokens,
    )
    return SdftObjective(ctx, teacher, factory(ctx.student, ctx.tokenizer, ctx.placement, shape))


def _retention(restore: bool) -> Callable[..., Objective]:
    def build(
        ctx: StageContext, base_dir: Path, factory: BackendFactory, pool: Sequence[tuple[int, ...]]
    ) -> Objective:
        start = (
            RetentionObjective.restore_start(ctx.resolved.max_steps, ctx.config.restore_fraction)
            if restore
            else None
        )
        parent = _teacher(ctx, "frozen", base_dir)
        shape = _rollout_shape(
            ctx,
            ctx.resolved.retention_batch_size,
            max((len(p) for p in pool), default=0) + ctx.config.retention_max_new_tokens,
        )
        backend = factory(ctx.student, ctx.tokenizer, ctx.placement, shape)
        return RetentionObjective(ctx, parent, backend, pool, restore_from_step=start)

    return build


Builder = Callable[[StageContext, Path, BackendFactory, Sequence[tuple[int, ...]]], Objective]
BUILDERS: dict[str, Builder] = {
    "sft": _sft,
    "sdft": _sdft,
    "sft_retain": _retention(restore=False),
    "sft_restore": _retention(restore=True),
}


def build_objective(
    ctx: StageContext,
    *,
    base_dir: Path,
    backend_factory: BackendFactory | None,
    pool: Sequence[tuple[int, ...]] = (),
) -> Objective:
    """The stage's objective. `pool`: the retention prompts, tokenized (retention methods only)."""
    builder = BUILDERS.get(ctx.config.method)
    if builder is None:
        raise ValueError(
            f"method {ctx.config.method!r} cannot train: 'auto' is resolved by the readiness probe first "
            "(workers/training/method_choice.py)"
        )
    return builder(ctx, base_dir, backend_factory or transformers_backend, pool)
