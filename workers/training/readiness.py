"""The teacher-readiness probe: a few seconds before training that tell whether SDFT can work at all.

For a few held-out demonstrations it greedy-decodes the student prompt (query only) and the teacher
prompt (query + demonstration in the stage's teacher template, same chat-template kwargs), grades
both answers against the demonstration, samples the student's own answers, measures the
demonstration's NLL per token in both contexts, and counts teacher answers that carry template
wording. The decision rule and the report live torch-free in app.training.readiness.

The answers and samples come from an evaluation engine on the model (`engine`; jobs and the CLI
pass vLLM where it is the default, which evaluates in fp32 on CPU so that its greedy answers are
transformers', and falls back to transformers), the NLLs from the model itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from app.contracts.demonstrations import DatasetError, Demonstration
from app.contracts.rollout_settings import RolloutSettings
from app.evaluation.graders import grade
from app.evaluation.leakage import default_leakage_phrases, find_leaked_phrases
from app.training.readiness import (
    ProbeRow,
    ReadinessReport,
    ReadinessThresholds,
    build_readiness_report,
    check_probe_grader,
    pick_holdout,
    probe_reference,
)
from app.training.stage_config import StageConfig, auto_max_new_tokens
from workers.evaluation.engine import make_eval_backend
from workers.models.chat import decode_text, pad_token_id
from workers.models.forward import continuation_logprobs
from workers.models.loading import model_context_length, stop_token_ids
from workers.models.placement import Placement, default_placement
from workers.rollout.base import RolloutShape, SamplingParams
from workers.training.prompts import PreparedExample, prepare_examples

# How many skipped rows the report names (the count is always complete).
UNUSABLE_EXAMPLES = 5


def _stop_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> tuple[int, ...]:
    """The tokenizer's EOS plus the generation config's end-of-turn ids, as training stops rollouts."""
    ids = set(stop_token_ids(tokenizer))
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update([eos] if isinstance(eos, int) else list(eos or []))
    return tuple(sorted(ids))


def _holdout(
    rows: Sequence[Demonstration],
    tokenizer: PreTrainedTokenizerBase,
    config: StageConfig,
    *,
    grader: str,
    holdout: int,
    seed: int,
    context_length: int | None,
    max_new_tokens: int,
) -> tuple[list[tuple[PreparedExample, str]], list[str]]:
    """The first `holdout` rows in seeded order that can be graded and fit: (example, reference) pairs,
    and a reason for every row skipped on the way. Prompts are built exactly as training builds them."""
    chosen: list[tuple[PreparedExample, str]] = []
    skipped: list[str] = []
    for index in pick_holdout([row.row_id for row in rows], len(rows), seed):
        if len(chosen) == holdout:
            break
        row = rows[index]
        try:
            reference = probe_reference(grader, row.demonstration, row.question)
            example = prepare_examples([row], tokenizer, config, int(tokenizer.eos_token_id))[0]
        except DatasetError as error:
            skipped.append(f"{row.row_id}: {'; '.join(problem.reason for problem in error.problems)}")
            continue
        except ValueError as error:
            skipped.append(f"{row.row_id}: {error}")
            continue
        longest = len(example.teacher_prompt_ids) + max(max_new_tokens, len(example.demonstration_ids))
        if context_length is not None and longest > context_length:
            skipped.append(
                f"{row.row_id}: the teacher prompt and answer need {longest} positions, over {context_length}"
            )
            continue
        chosen.append((example, reference))
    return chosen, skipped


@torch.no_grad()
def teacher_readiness(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[Demonstration],
    *,
    grader: str,
    grader_options: Mapping[str, Any] | None = None,
    config: StageConfig,
    holdout: int = 8,
    seed: int = 0,
    max_new_tokens: int = 128,
    placement: Placement | None = None,
    thresholds: ReadinessThresholds | None = None,
    leakage_phrases: Sequence[str] | None = None,
    batch_size: int = 16,
    samples: int = 4,
    engine: str = "transformers",
    rollout: RolloutSettings | None = None,
) -> ReadinessReport:
    """Probe whether the teacher (demonstration in context) clearly beats the student (see
    app.training.readiness for the rule). Deterministic: greedy decoding on rows picked by
    `pick_holdout(row ids, seed)`. leakage_phrases defaults to the observed phrases plus
    config.teacher_template's fixed clauses. Raises ValueError for a grader that cannot take a
    demonstration as its reference (regex, choice). `engine` ("vllm" or "transformers", as
    `make_eval_backend` takes it, with `rollout` its engine settings) generates the answers."""
    check_probe_grader(grader)
    placement = placement or default_placement(str(next(model.parameters()).device))
    phrases = (
        tuple(leakage_phrases)
        if leakage_phrases is not None
        else default_leakage_phrases(config.teacher_template)
    )
    chosen, skipped = _holdout(
        rows,
        tokenizer,
        config,
        grader=grader,
        holdout=holdout,
        seed=seed,
        context_length=model_context_length(model),
        max_new_tokens=max_new_tokens,
    )
    probe_rows: list[ProbeRow] = []
    ran = "none"  # nothing generated: no row could be probed
    if chosen:
        examples = [example for example, _ in chosen]
        prompts = [list(e.student_prompt_ids) for e in examples] + [
            list(e.teacher_prompt_ids) for e in examples
        ]
        pad = pad_token_id(tokenizer)
        # No longer than training would sample (room for the longest demonstration): answers come first,
        # and 128 tokens of rambling per probe generation made the probe take minutes on a CPU.
        max_new_tokens = min(
            max_new_tokens, auto_max_new_tokens(max(len(e.demonstration_ids) for e in examples))
        )
        backend = make_eval_backend(
            engine,
            str(model.name_or_path),
            model=model,
            tokenizer=tokenizer,
            placement=placement,
            batch_size=batch_size,
            rollout=rollout,
            shape=RolloutShape(
                max(len(prompts), len(examples) * samples), max(map(len, prompts)) + max_new_tokens
            ),
        )
        ran = backend.name
        params = SamplingParams(
            max_new_tokens=max_new_tokens, temperature=0.0, stop_token_ids=_stop_ids(model, tokenizer)
        )
        # The student's own samples (temperature 1, as rollouts are drawn): SDFT's signal reaches the
        # answer only through states the student visits, so how often it samples the answer matters.
        sampling = SamplingParams(
            max_new_tokens=max_new_tokens,
            temperature=1.0,
            num_samples=samples,
            seed=seed,
            stop_token_ids=params.stop_token_ids,
        )
        try:
            generated = backend.generate(prompts, params)
            student_prompts = [list(e.student_prompt_ids) for e in examples]
            sampled = backend.generate(student_prompts, sampling) if samples else []
        finally:
            backend.close()
        answers = [decode_text(tokenizer, out[0].token_ids) for out in generated]
        token_logprobs = continuation_logprobs(
            model,
            prompts,
            [list(e.demonstration_ids) for e in examples] * 2,
            pad_token_id=pad,
            placement=placement,
            batch_size=batch_size,
        )
        count = len(examples)
        for i, (example, reference) in enumerate(chosen):
            student_answer, teacher_answer = answers[i], answers[count + i]
            tokens = len(example.demonstration_ids)
            sample_scores = [
                grade(grader, decode_text(tokenizer, c.token_ids), reference, grader_options)
                for c in (sampled[i] if sampled else [])
            ]
            probe_rows.append(
                ProbeRow(
                    row_id=example.row.row_id,
                    student_output=student_answer,
                    teacher_output=teacher_answer,
                    student_score=grade(grader, student_answer, reference, grader_options),
                    teacher_score=grade(grader, teacher_answer, reference, grader_options),
                    student_nll=-sum(token_logprobs[i]) / tokens,
                    teacher_nll=-sum(token_logprobs[count + i]) / tokens,
                    demonstration_tokens=tokens,
                    teacher_leaked=find_leaked_phrases(teacher_answer, phrases),
                    student_sample_score=sum(sample_scores) / len(sample_scores) if sample_scores else None,
                )
            )
    return build_readiness_report(
        probe_rows,
        grader=grader,
        thresholds=thresholds,
        leakage_phrases=phrases,
        unusable=len(skipped),
        unusable_examples=skipped[:UNUSABLE_EXAMPLES],
        engine=ran,
    )
