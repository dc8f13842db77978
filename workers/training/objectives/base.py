"""What every training objective shares: the contract the stage loop calls once per optimizer step,
and the two terms objectives are made of.

- `supervised_term`: cross-entropy on the demonstrations (teacher-forced), SFT's whole loss.
- `OnPolicyDistillation`: sample completions from the current student, score those tokens with a
  teacher in its own context, and match the student to the teacher per token over the vocabulary.
  SDFT is this term with the demonstration-conditioned teacher; the retention methods use it with the
  frozen parent, which sees the same prompt as the student.

Each term normalizes its own loss (per-sequence mean or one token mean, `loss_normalization`) over the
whole optimizer step and scales it by its weight, then backpropagates micro-batch by micro-batch; the
loop clips, steps the optimizer and logs. An objective never branches on the method: each method is
one class in this package, chosen once per stage (`build_objective`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from app.evaluation.leakage import template_leakage
from app.training.stage_config import ResolvedStage, StageConfig
from workers.models.forward import (
    PackedBatch,
    completion_hidden,
    head_weight,
    hidden_states,
    micro_batches,
    pack,
    sampled_token_logprobs,
)
from workers.models.placement import Placement
from workers.rollout.base import Completion, RolloutBackend, SamplingParams, StopCheck
from workers.training.chunked_head import (
    TokenLoss,
    chunked_lm_head_loss,
    cross_entropy_token_loss,
    distillation_token_loss,
)
from workers.training.prompts import PreparedExample
from workers.training.schedule import rollout_seed
from workers.training.teacher import Teacher
from workers.training.token_weights import (
    completion_loss_mask,
    sequence_mean_token_weights,
    token_mean_token_weights,
    truncated_importance_weights,
)


@dataclass(frozen=True)
class StageContext:
    """What a stage's objective may use, built once by `run_stage`."""

    config: StageConfig
    resolved: ResolvedStage
    student: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    stop_ids: tuple[int, ...]
    placement: Placement
    longest_prompt_tokens: int  # the longest student prompt of the stage's rows (own and replayed)
    should_stop: StopCheck | None = None  # asked while generating: a cancelled job stops within seconds

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    @property
    def max_new_tokens(self) -> int:
        assert self.resolved.max_new_tokens is not None, "run_stage resolves max_new_tokens"
        return self.resolved.max_new_tokens


@dataclass
class TermResult:
    """One term's share of a step: its (weighted) loss, and each counted token's part of it."""

    loss: float = 0.0
    contributions: list[Tensor] = field(default_factory=list)
    completion_lengths: list[int] = field(default_factory=list)
    stopped: int = 0
    importance_weights: list[float] = field(default_factory=list)
    rollout_seconds: float = 0.0
    texts: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class StepOutcome:
    """What an objective measured while accumulating one step's gradients."""

    loss: float
    completion_lengths: list[int]  # rollouts for on-policy terms, demonstrations for SFT
    stop_fraction: float
    importance_weight_mean: float | None
    rollout_seconds: float
    rollout_leak_fraction: float | None
    token_contributions: Tensor  # [N] each counted token's part of the loss, detached
    parts: dict[str, float]  # each named term's loss (e.g. "supervised", "retention")


class Objective(Protocol):
    name: str
    rollouts: RolloutBackend | None  # the backend that samples its rollouts (None: it samples none)
    # The demonstration-conditioned model the probe divergence is measured against (SDFT's teacher);
    # None: the student itself with the demonstration in context.
    reference_teacher: Teacher | None

    def accumulate(self, step: int, batch: Sequence[PreparedExample]) -> StepOutcome:
        """Forward and backward every micro-batch of optimizer step `step` (0-based)."""
        ...

    def after_optimizer_step(self) -> None: ...

    def state_tensors(self) -> dict[str, Tensor]:
        """What a checkpoint must keep besides the student and the optimizer (an EMA teacher)."""
        ...

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None: ...

    def close(self) -> None: ...


def sampler_logprob_table(
    completions: Sequence[Completion], width: int, device: torch.device
) -> tuple[Tensor, Tensor]:
    """The sampler's log-probabilities [B, width] (0 where it gave none) and the mask of the
    positions that have one: a backend may leave a stop token without one (`Completion`)."""
    logprobs_BT = torch.zeros(len(completions), width, device=device)
    for i, c in enumerate(completions):
        logprobs_BT[i, : len(c.logprobs)] = torch.tensor(c.logprobs, device=device)
    lengths_B1 = torch.tensor([[len(c.logprobs)] for c in completions], device=device)
    return logprobs_BT, torch.arange(width, device=device)[None] < lengths_B1


def outcome_of(terms: dict[str, TermResult], *, leak_phrases: Sequence[str] | None = None) -> StepOutcome:
    """Combine the step's terms into the loop's StepOutcome (a term that did not run this step is absent)."""
    lengths = [n for term in terms.values() for n in term.completion_lengths]
    weights = [w for term in terms.values() for w in term.importance_weights]
    contributions = [c for term in terms.values() for c in term.contributions]
    texts = [t for term in terms.values() for t in term.texts]
    return StepOutcome(
        loss=sum(term.loss for term in terms.values()),
        completion_lengths=lengths,
        stop_fraction=sum(term.stopped for term in terms.values()) / max(1, len(lengths)),
        importance_weight_mean=sum(weights) / len(weights) if weights else None,
        rollout_seconds=sum(term.rollout_seconds for term in terms.values()),
        rollout_leak_fraction=template_leakage(texts, leak_phrases).rate
        if leak_phrases is not None
        else None,
        token_contributions=torch.cat(contributions) if contributions else torch.zeros(0),
        parts={name: term.loss for name, term in terms.items()},
    )


class _RecordingTokenLoss:
    """Wraps a TokenLoss and keeps each position's (unweighted) value, for the concentration metric."""

    def __init__(self, inner: TokenLoss, size: int) -> None:
        self.inner = inner
        self.values_N = torch.zeros(size, dtype=torch.float32)

    def __call__(self, logits_nV: Tensor, positions: slice) -> Tensor:
        loss_n = self.inner(logits_nV, positions)
        self.values_N[positions] = loss_n.detach().float().cpu()
        return loss_n


SequenceWeights = Callable[[Tensor, PackedBatch, Tensor], Tensor | None]  # (student_h, batch, mask) -> [B]
TokenLossFor = Callable[[Tensor, Tensor], TokenLoss]  # (kept positions [N], target ids [N]) -> TokenLoss


def step_total(counts: Sequence[int], normalization: str) -> int:
    """The denominator a term divides by over a whole step: its sequences, or its counted tokens."""
    return max(1, len(counts) if normalization == "sequence" else sum(counts))


def backward_micro_batch(
    ctx: StageContext,
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Sequence[int]],
    *,
    skip_first: int,
    scale: float,
    total: int,
    weight: float,
    token_loss_for: TokenLossFor,
    sequence_weights: SequenceWeights | None = None,
) -> tuple[float, Tensor, Tensor | None]:
    """Loss and backward for a few (prompt, completion) sequences of one term.

    Returns (loss, each counted token's weighted contribution [N], sequence weights or None). Logits
    are divided by `scale`'s inverse temperature on both sides: (h * s) @ W == (h @ W) * s.
    """
    cfg = ctx.config
    batch = pack(prompts, completions, ctx.pad_id, ctx.placement.device)
    ids_BT, lengths_B = batch.completion_ids, batch.completion_lengths
    with ctx.placement.autocast():
        student_h = completion_hidden(hidden_states(ctx.student, batch), batch) * scale
    mask_BT = completion_loss_mask(ids_BT, lengths_B, skip_first)
    seq_w_B = sequence_weights(student_h, batch, mask_BT) if sequence_weights is not None else None
    if cfg.loss_normalization == "sequence":
        weights_BT = sequence_mean_token_weights(mask_BT, seq_w_B, total)
    else:
        weights_BT = token_mean_token_weights(mask_BT, seq_w_B, total)
    weights_BT = weights_BT * weight
    keep_N = (weights_BT.reshape(-1) > 0).nonzero().squeeze(1)
    if keep_N.numel() == 0:  # every token masked (e.g. completions shorter than skip_first)
        return 0.0, torch.zeros(0), seq_w_B
    width = student_h.shape[-1]
    hidden_NH = student_h.reshape(-1, width).index_select(0, keep_N)
    target_N = ids_BT.reshape(-1).index_select(0, keep_N)
    weights_N = weights_BT.reshape(-1).index_select(0, keep_N)
    recorder = _RecordingTokenLoss(token_loss_for(keep_N, target_N), int(keep_N.numel()))
    loss = chunked_lm_head_loss(
        hidden_NH, head_weight(ctx.student), weights_N, token_loss=recorder, chunk_size=cfg.loss_chunk_size
    )
    loss.backward()
    return float(loss.detach()), recorder.values_N * weights_N.detach().float().cpu(), seq_w_B


def supervised_term(
    ctx: StageContext, examples: Sequence[PreparedExample], *, weight: float = 1.0
) -> TermResult:
    """Cross-entropy on each example's demonstration (and its stop token), teacher-forced."""
    result = TermResult()
    targets = [e.demonstration_ids for e in examples]
    total = step_total([len(t) for t in targets], ctx.config.loss_normalization)
    widths = [len(e.student_prompt_ids) + len(e.demonstration_ids) for e in examples]
    for rows in micro_batches(widths, ctx.config.micro_batch_size):
        micro = [examples[i] for i in rows]
        loss, contributions, _ = backward_micro_batch(
            ctx,
            [e.student_prompt_ids for e in micro],
            [e.demonstration_ids for e in micro],
            skip_first=0,
            scale=1.0,
            total=total,
            weight=weight,
            token_loss_for=lambda _keep, target: cross_entropy_token_loss(target),
        )
        result.loss += loss
        result.contributions.append(contributions)
    result.completion_lengths = [len(t) for t in targets]
    result.stopped = len(targets)
    return result


@dataclass(frozen=True)
class DistillPrompt:
    """One prompt of an on-policy term: what the student sees, and what its teacher sees."""

    student_ids: tuple[int, ...]
    teacher_ids: tuple[int, ...]


class OnPolicyDistillation:
    """Sample from the student, score the samples with `teacher` in its own context, match per token.

    skip_first masks the first completion tokens out of the loss (the paper masks 3 against teacher
    template artifacts); truncated importance weights correct a sampler whose numerics differ from
    the trainer's (vLLM), per sequence.
    """

    def __init__(
        self,
        ctx: StageContext,
        teacher: Teacher,
        backend: RolloutBackend,
        *,
        max_new_tokens: int,
        samples_per_prompt: int,
        skip_first: int,
        seed_offset: int = 0,
    ) -> None:
        self.ctx = ctx
        self.teacher = teacher
        self.backend = backend
        self.max_new_tokens = max_new_tokens
        self.samples_per_prompt = samples_per_prompt
        self.skip_first = skip_first
        self.seed_offset = seed_offset

    def sample(
        self, step: int, prompts: Sequence[DistillPrompt]
    ) -> tuple[list[DistillPrompt], list[Completion], float]:
        cfg = self.ctx.config
        self.backend.sync_weights(step)
        started = time.perf_counter()
        params = SamplingParams(
            max_new_tokens=self.max_new_tokens,
            temperature=cfg.temperature,
            num_samples=self.samples_per_prompt,
            seed=rollout_seed(cfg.seed + self.seed_offset, step),
            stop_token_ids=self.ctx.stop_ids,
        )
        sampled = self.backend.generate([p.student_ids for p in prompts], params, self.ctx.should_stop)
        pairs = [(p, c) for p, completions in zip(prompts, sampled, strict=True) for c in completions]
        return [p for p, _ in pairs], [c for _, c in pairs], time.perf_counter() - started

    def run(self, step: int, prompts: Sequence[DistillPrompt], *, weight: float = 1.0) -> TermResult:
        expanded, completions, seconds = self.sample(step, prompts)
        result = TermResult(rollout_seconds=seconds)
        counted = [max(0, len(c.token_ids) - self.skip_first) for c in completions]
        total = step_total(counted, self.ctx.config.loss_normalization)
        widths = [len(p.student_ids) + len(c.token_ids) for p, c in zip(expanded, completions, strict=True)]
        for rows in micro_batches(widths, self.ctx.config.micro_batch_size):
            loss, contributions, seq_w = self._micro(
                [expanded[i] for i in rows], [completions[i] for i in rows], total, weight
            )
            result.loss += loss
            result.contributions.append(contributions)
            if seq_w is not None:
                result.importance_weights += [float(w) for w in seq_w]
        result.completion_lengths = [len(c.token_ids) for c in completions]
        result.stopped = sum(c.finish_reason == "stop" for c in completions)
        result.texts = self.ctx.tokenizer.batch_decode(
            [list(c.token_ids) for c in completions], skip_special_tokens=True
        )
        return result

    def _micro(
        self, prompts: Sequence[DistillPrompt], completions: Sequence[Completion], total: int, weight: float
    ) -> tuple[float, Tensor, Tensor | None]:
        cfg = self.ctx.config
        scale = 1.0 / cfg.temperature
        token_ids = [c.token_ids for c in completions]
        device = self.ctx.placement.device

        def importance(student_h: Tensor, batch: PackedBatch, mask_BT: Tensor) -> Tensor | None:
            if self.backend.exact_numerics:
                return None
            width = student_h.shape[-1]
            trainer_lp = sampled_token_logprobs(
                student_h.detach().reshape(-1, width),
                head_weight(self.ctx.student),
                batch.completion_ids.reshape(-1),
                cfg.loss_chunk_size,
            ).view_as(mask_BT)
            # Only positions the sampler scored count: none is given a made-up log-probability.
            sampler_lp, scored_BT = sampler_logprob_table(completions, mask_BT.shape[1], device)
            return truncated_importance_weights(trainer_lp, sampler_lp, scored_BT, cfg.importance_cap)

        def token_loss_for(keep_N: Tensor, target_N: Tensor) -> TokenLoss:
            teacher_batch = pack([p.teacher_ids for p in prompts], token_ids, self.ctx.pad_id, device)
            with torch.no_grad(), self.ctx.placement.autocast():
                teacher_h = completion_hidden(self.teacher.hidden(teacher_batch), teacher_batch) * scale
            return distillation_token_loss(
                teacher_h.reshape(-1, teacher_h.shape[-1]).index_select(0, keep_N),
                self.teacher.head_weight(),
                divergence=cfg.divergence,
                jsd_alpha=cfg.jsd_alpha,
                support=cfg.support,
                top_k=cfg.top_k,
                sampled_ids_N=target_N,
            )

        return backward_micro_batch(
            self.ctx,
            [p.student_ids for p in prompts],
            token_ids,
            skip_first=self.skip_first,
            scale=scale,
            total=total,
            weight=weight,
            token_loss_for=token_loss_for,
            sequence_weights=importance,
        )
