"""Run a suite on a model: render prompts with the model's chat template, generate in batches, grade.

Generated items: the prompt is rendered with the chat template (generation prompt added), decoded
greedily or as the suite's decoding says, stopped at the model's stop tokens, and the completion is
decoded without special tokens before grading. `choice` items are not generated: each option is
scored by the sum of its tokens' log-probabilities after the rendered prompt, and the best wins.

Failures are per item and never lose other items' results: a prompt that does not fit the context
(or that the chat template rejects) fails before generation; a batch whose backend call raises is
retried item by item, so only the item that really fails is lost (recorded as a transient failure).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from transformers import PreTrainedTokenizerBase

from app.evaluation.graders import grade, grade_choice
from app.evaluation.results import ItemRecord, SuiteResult, effective_decoding
from app.evaluation.stats import derive_seed
from app.evaluation.suites import EvalSuite, SuiteItem
from workers.models.chat import ChatRenderer, decode_text, pad_token_id
from workers.models.forward import continuation_logprobs
from workers.models.loading import model_context_length, stop_token_ids
from workers.models.placement import Placement, default_placement
from workers.rollout.base import Completion, RolloutBackend, SamplingParams

Progress = Callable[[int, int], None]
_T = TypeVar("_T")
_R = TypeVar("_R")


# --------------------------------------------------------------------------- building blocks


def run_isolated(items: Sequence[_T], run: Callable[[Sequence[_T]], Sequence[_R]]) -> list[_R | Exception]:
    """`run(items)` as one batch; if it raises, each item is retried alone, so one bad item cannot
    take its batch-mates' results with it. One result, or the exception it raised, per item."""
    try:
        results: list[_R | Exception] = list(run(items))
    except Exception as error:
        if len(items) == 1:
            return [error]
        outcomes: list[_R | Exception] = []
        for item in items:
            try:
                outcomes.extend(run([item]))
            except Exception as item_error:
                outcomes.append(item_error)
        return outcomes
    if len(results) != len(items):
        raise RuntimeError(f"the batch returned {len(results)} results for {len(items)} items")
    return results


def best_option(logliks: Sequence[float]) -> int:
    """The option grade_choice counts as chosen: highest log-likelihood, ties to the lowest index."""
    return max(range(len(logliks)), key=lambda i: (-math.inf if math.isnan(logliks[i]) else logliks[i], -i))


def _error_text(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


# --------------------------------------------------------------------------- the runner


@dataclass(frozen=True)
class PreparedItem:
    prompt: list[int]
    options: list[list[int]] | None  # token ids per option (choice items)


def prepare_item(
    item: SuiteItem, renderer: ChatRenderer, context_length: int | None, max_new_tokens: int
) -> PreparedItem | str:
    """The item's prompt (and options) as token ids, or why it cannot be evaluated on this model: the
    chat template rejects it, or it does not fit the context. The same on every model of a tokenizer
    and context, so job validation reports these before any training (`suite_prompt_problems`)."""
    try:
        prompt = renderer.prompt_ids(item.messages())
    except Exception as error:  # a template may reject a conversation shape (e.g. a system turn)
        return f"the chat template failed: {_error_text(error)}"
    if item.grader == "choice":
        assert item.options is not None
        options = [renderer.text_ids(option) for option in item.options]
        needed = len(prompt) + max(len(option) for option in options)
        if context_length is not None and needed > context_length:
            return f"prompt plus longest option is {needed} tokens; the model's context is {context_length}"
        return PreparedItem(prompt, options)
    if context_length is not None and len(prompt) > context_length - max_new_tokens:
        return (
            f"prompt is {len(prompt)} tokens; the model's context is {context_length} positions and the "
            f"suite generates up to {max_new_tokens} new tokens, so prompts may have at most "
            f"{context_length - max_new_tokens} tokens"
        )
    return PreparedItem(prompt, None)


def suite_prompt_problems(
    suite: EvalSuite, tokenizer: PreTrainedTokenizerBase, context_length: int | None
) -> list[str]:
    """ "item <id> (line N): why" for every item that would fail to evaluate on any model with this
    tokenizer and context: such an item fails on parent and candidate alike, so every gate fails."""
    renderer = ChatRenderer(tokenizer, {})
    problems = []
    for item in suite.items:
        prepared = prepare_item(item, renderer, context_length, suite.meta.decoding.max_new_tokens)
        if isinstance(prepared, str):
            problems.append(f"item {item.item_id} (line {item.line}): {prepared}")
    return problems


class _SuiteRun:
    """State of one evaluate_suite call: records by item id and progress."""

    def __init__(self, suite: EvalSuite, progress: Progress | None) -> None:
        self.suite = suite
        self.records: dict[str, ItemRecord] = {}
        self.progress = progress
        self.done = 0

    def record(self, record: ItemRecord) -> None:
        self.records[record.item_id] = record

    def fail(self, item: SuiteItem, error: str, *, transient: bool = False) -> None:
        self.record(ItemRecord(item.item_id, "", None, error=error, transient=transient))

    def advance(self, count: int) -> None:
        self.done += count
        if self.progress is not None and count:
            self.progress(self.done, len(self.suite.items))

    def ordered(self) -> list[ItemRecord]:
        return [self.records[item.item_id] for item in self.suite.items]


def _grade_generated(
    item: SuiteItem,
    outcome: Completion | Exception,
    tokenizer: PreTrainedTokenizerBase,
    options: Mapping[str, Any],
) -> ItemRecord:
    if isinstance(outcome, Exception):
        return ItemRecord(
            item.item_id, "", None, error=f"generation failed: {_error_text(outcome)}", transient=True
        )
    output = decode_text(tokenizer, outcome.token_ids)
    try:
        score = grade(item.grader, output, list(item.references), options)
    except Exception as error:  # a grader bug or a reference it cannot read: this item only
        return ItemRecord(item.item_id, output, None, error=f"grading failed: {_error_text(error)}")
    return ItemRecord(item.item_id, output, score)


def evaluate_suite(
    backend: RolloutBackend,
    tokenizer: PreTrainedTokenizerBase,
    suite: EvalSuite,
    *,
    seed: int = 0,
    batch_size: int = 16,
    model_for_choice: torch.nn.Module | None = None,
    placement: Placement | None = None,
    progress: Progress | None = None,
    chat_template_kwargs: Mapping[str, Any] | None = None,
    stop_ids: Sequence[int] | None = None,
    context_length: int | None = None,
) -> SuiteResult:
    """Evaluate every item of `suite` and summarize (see the module docstring).

    - seed: sampled suites draw batch b from the stream derive_seed(seed, suite sha + b); greedy
      suites ignore it.
    - model_for_choice: the model that scores `choice` items (required when the suite has any);
      placement defaults to the device its parameters are on.
    - stop_ids: default `stop_token_ids(tokenizer)`; pass `stop_token_ids(tokenizer, model_dir)` to
      include the generation config's end-of-turn ids.
    - context_length: default from model_for_choice's or the backend's `.model` config; when neither
      says, prompt lengths are not checked here and the backend reports overlong ones.
    - progress(done, total) is called after each batch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    choice_items = [item for item in suite.items if item.grader == "choice"]
    if choice_items and model_for_choice is None:
        raise ValueError(
            f"suite {suite.meta.name!r} has {len(choice_items)} choice item(s), which are scored by "
            "log-likelihood: pass model_for_choice"
        )
    started = time.perf_counter()
    run = _SuiteRun(suite, progress)
    renderer = ChatRenderer(tokenizer, dict(chat_template_kwargs or {}))
    decoding = suite.meta.decoding
    if context_length is None:
        context_length = model_context_length(model_for_choice or getattr(backend, "model", None))
    stops = tuple(stop_token_ids(tokenizer) if stop_ids is None else stop_ids)

    to_generate: list[tuple[SuiteItem, list[int]]] = []
    to_score: list[tuple[SuiteItem, list[int], list[list[int]]]] = []
    for item in suite.items:
        prepared = prepare_item(item, renderer, context_length, decoding.max_new_tokens)
        if isinstance(prepared, str):
            run.fail(item, prepared)
        elif prepared.options is not None:
            to_score.append((item, prepared.prompt, prepared.options))
        else:
            to_generate.append((item, prepared.prompt))
    run.advance(len(run.records))

    # Batches of similar lengths: a padded batch costs its longest prompt (tool-use prompts run from
    # 500 to 1,300 tokens). Records come back in suite order whatever the batching.
    to_generate = sorted(to_generate, key=lambda pair: len(pair[1]))
    _generate_items(run, backend, tokenizer, to_generate, seed=seed, batch_size=batch_size, stops=stops)
    if to_score:
        assert model_for_choice is not None
        if placement is None:
            placement = default_placement(str(next(model_for_choice.parameters()).device))
        _score_choices(run, model_for_choice, tokenizer, to_score, placement=placement, batch_size=batch_size)

    return SuiteResult.from_records(
        suite_name=suite.meta.name,
        suite_sha256=suite.sha256,
        decoding=effective_decoding(
            decoding.model_dump(mode="json"),
            engine=backend.name,
            seed=seed,
            batch_size=batch_size,
            chat_template_kwargs=chat_template_kwargs,
        ),
        records=run.ordered(),
        meta={"seconds": round(time.perf_counter() - started, 3), "engine": backend.name},
    )


def _generate_items(
    run: _SuiteRun,
    backend: RolloutBackend,
    tokenizer: PreTrainedTokenizerBase,
    items: Sequence[tuple[SuiteItem, list[int]]],
    *,
    seed: int,
    batch_size: int,
    stops: tuple[int, ...],
) -> None:
    decoding = run.suite.meta.decoding
    for batch_index, start in enumerate(range(0, len(items), batch_size)):
        chunk = items[start : start + batch_size]
        params = SamplingParams(
            max_new_tokens=decoding.max_new_tokens,
            temperature=0.0 if decoding.greedy else decoding.temperature,
            num_samples=1,
            seed=derive_seed(seed, f"{run.suite.sha256}:{batch_index}"),
            stop_token_ids=stops,
        )

        def generate(
            batch: Sequence[tuple[SuiteItem, list[int]]], params: SamplingParams = params
        ) -> list[Completion]:
            return [samples[0] for samples in backend.generate([prompt for _, prompt in batch], params)]

        outcomes = run_isolated(chunk, generate)
        for (item, _), outcome in zip(chunk, outcomes, strict=True):
            run.record(_grade_generated(item, outcome, tokenizer, run.suite.meta.grader_options))
        run.advance(len(chunk))


def _score_choices(
    run: _SuiteRun,
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    items: Sequence[tuple[SuiteItem, list[int], list[list[int]]]],
    *,
    placement: Placement,
    batch_size: int,
) -> None:
    pad = pad_token_id(tokenizer)

    def option_logliks(batch: Sequence[tuple[SuiteItem, list[int], list[list[int]]]]) -> list[list[float]]:
        pairs = [(prompt, option) for _, prompt, options in batch for option in options]
        token_logprobs = continuation_logprobs(
            model,
            [prompt for prompt, _ in pairs],
            [option for _, option in pairs],
            pad_token_id=pad,
            placement=placement,
            batch_size=batch_size,
        )
        sums = [math.fsum(values) for values in token_logprobs]
        grouped, start = [], 0
        for _, _, options in batch:
            grouped.append(sums[start : start + len(options)])
            start += len(options)
        return grouped

    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        for (item, _, _), outcome in zip(chunk, run_isolated(chunk, option_logliks), strict=True):
            if isinstance(outcome, Exception):
                run.fail(item, f"scoring the options failed: {_error_text(outcome)}", transient=True)
                continue
            assert item.options is not None
            run.record(
                ItemRecord(
                    item.item_id,
                    item.options[best_option(outcome)],
                    grade_choice(outcome, item.reference_index),
                    option_logliks=tuple(outcome),
                )
            )
        run.advance(len(chunk))
