"""The learning diagnostics' measurements on a fixed probe batch of a stage's own demonstrations.

- divergence: KL(reference ‖ student) per demonstration token, teacher-forced on the demonstration,
  where the reference sees the demonstration in its prompt (SDFT's teacher; for other methods the
  student itself, with the demonstration in context). It falls when the student learns what the
  demonstrations say.
- nll: the student's NLL per demonstration token (what SFT minimizes).
- greedy_score: the share of probe prompts the student answers right, greedily, graded with the new
  skill's grader against the demonstration's answer (app/training/readiness.py `probe_reference`);
  None when there is no grader that can read a demonstration. Decoded by the stage's rollout backend
  when the sync its next rollout makes anyway gives it the current weights (a vLLM engine decodes
  two to three times faster than `transformers.generate`; in its own dtype, so where it runs bf16 an
  answer can differ from the fp32 student's), else by `transformers.generate` on the student (SFT,
  or `sync_every` above 1 between syncs).

The rules that read them (stall, concentration) are in app/training/diagnostics.py.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from app.evaluation.graders import grade
from app.training.readiness import PROBE_GRADERS, pick_holdout, probe_reference
from workers.models.forward import completion_hidden, head_weight, hidden_states, pack
from workers.rollout.base import RolloutBackend, SamplingParams
from workers.rollout.hf_generate import TransformersBackend
from workers.training.chunked_head import (
    chunked_lm_head_loss,
    cross_entropy_token_loss,
    distillation_token_loss,
)
from workers.training.objectives.base import StageContext
from workers.training.prompts import PreparedExample
from workers.training.teacher import Teacher

PROBE_SEED = 0


@dataclass(frozen=True)
class ProbeMeasurement:
    divergence: float
    nll: float
    greedy_score: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            f"probe_{key}" if key != "greedy_score" else "probe_score": value
            for key, value in asdict(self).items()
        }


class LearningProbe:
    def __init__(
        self,
        ctx: StageContext,
        examples: Sequence[PreparedExample],
        reference: Teacher | None,
        graded: Sequence[tuple[str, Mapping[str, Any], str]] | None,
        rollouts: RolloutBackend | None = None,
    ) -> None:
        """graded: per example (grader, options, reference), or None for no greedy score.
        rollouts: the stage's rollout backend (None: the stage samples none)."""
        self.ctx = ctx
        self.examples = list(examples)
        self.reference = reference
        self.graded = graded
        self.rollouts = rollouts

    @classmethod
    def for_stage(
        cls,
        ctx: StageContext,
        examples: Sequence[PreparedExample],
        reference: Teacher | None,
        grader: str | None,
        grader_options: Mapping[str, Any] | None,
        rollouts: RolloutBackend | None = None,
    ) -> LearningProbe | None:
        """The probe batch: `probe_rows` training rows picked by row id (the same rows on resume)."""
        if ctx.config.probe_rows == 0:
            return None
        picked = [
            examples[i]
            for i in pick_holdout([e.row.row_id for e in examples], ctx.config.probe_rows, PROBE_SEED)
        ]
        graded: list[tuple[str, Mapping[str, Any], str]] | None = None
        if grader in PROBE_GRADERS:
            try:
                graded = [
                    (
                        grader,
                        grader_options or {},
                        probe_reference(grader, e.row.demonstration, e.row.question),
                    )
                    for e in picked
                ]
            except ValueError:
                graded = None  # a demonstration the grader cannot read: no greedy score, the rest stands
        return cls(ctx, picked, reference, graded, rollouts)

    @torch.no_grad()
    def measure(self, step: int) -> ProbeMeasurement:
        """The student after `step` optimizer steps (the step its next rollout is sampled for)."""
        ctx = self.ctx
        device = ctx.placement.device
        demos = [e.demonstration_ids for e in self.examples]
        student_batch = pack([e.student_prompt_ids for e in self.examples], demos, ctx.pad_id, device)
        teacher_batch = pack([e.teacher_prompt_ids for e in self.examples], demos, ctx.pad_id, device)
        with ctx.placement.autocast():
            student_h = completion_hidden(hidden_states(ctx.student, student_batch), student_batch)
            if self.reference is not None:
                reference_h = completion_hidden(self.reference.hidden(teacher_batch), teacher_batch)
                reference_head = self.reference.head_weight()
            else:
                reference_h = completion_hidden(hidden_states(ctx.student, teacher_batch), teacher_batch)
                reference_head = head_weight(ctx.student)
        lengths = student_batch.completion_lengths
        positions = torch.arange(student_batch.completion_ids.shape[1], device=device)
        mask_N = (positions.unsqueeze(0) < lengths.unsqueeze(1)).reshape(-1)
        keep_N = mask_N.nonzero().squeeze(1)
        width = student_h.shape[-1]
        hidden_NH = student_h.reshape(-1, width).index_select(0, keep_N)
        weights_N = torch.full((keep_N.numel(),), 1.0 / max(1, keep_N.numel()), device=device)
        divergence = chunked_lm_head_loss(
            hidden_NH,
            head_weight(ctx.student),
            weights_N,
            token_loss=distillation_token_loss(
                reference_h.reshape(-1, width).index_select(0, keep_N), reference_head
            ),
            chunk_size=ctx.config.loss_chunk_size,
        )
        nll = chunked_lm_head_loss(
            hidden_NH,
            head_weight(ctx.student),
            weights_N,
            token_loss=cross_entropy_token_loss(
                student_batch.completion_ids.reshape(-1).index_select(0, keep_N)
            ),
            chunk_size=ctx.config.loss_chunk_size,
        )
        return ProbeMeasurement(float(divergence), float(nll), self._greedy_score(step))

    def _decoder(self, step: int) -> RolloutBackend:
        """The stage's rollout backend when it serves the student at `step` after the sync the next
        rollout would make anyway (so the probe never moves the sync schedule), else transformers."""
        if self.rollouts is not None and self.rollouts.sync_weights(step):
            return self.rollouts
        return TransformersBackend(self.ctx.student, self.ctx.pad_id, self.ctx.placement)

    def _greedy_score(self, step: int) -> float | None:
        if self.graded is None:
            return None
        backend = self._decoder(step)
        params = SamplingParams(
            max_new_tokens=self.ctx.max_new_tokens, temperature=0.0, stop_token_ids=self.ctx.stop_ids
        )
        outputs = backend.generate([e.student_prompt_ids for e in self.examples], params)
        texts = self.ctx.tokenizer.batch_decode(
            [list(o[0].token_ids) for o in outputs], skip_special_tokens=True
        )
        scores = [
            grade(grader, text, reference, options)
            for text, (grader, options, reference) in zip(texts, self.graded, strict=True)
        ]
        return sum(scores) / len(scores)
