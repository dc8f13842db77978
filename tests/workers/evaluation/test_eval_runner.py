"""evaluate_suite on the tiny model: scores follow the real greedy outputs, choice items follow the
model's own log-likelihoods, and failures stay per item."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from app.evaluation.results import SuiteResult, ci_seed
from app.evaluation.stats import bootstrap_mean_ci
from app.evaluation.suites import EvalSuite, SuiteMeta, parse_suite_jsonl
from workers.evaluation.runner import evaluate_suite, run_isolated
from workers.models.chat import ChatRenderer
from workers.models.loading import context_length_from_config, load_model, load_tokenizer, stop_token_ids
from workers.models.placement import Placement, default_placement
from workers.rollout.base import Completion, SamplingParams
from workers.rollout.hf_generate import TransformersBackend

MAX_NEW_TOKENS = 8
QUESTIONS = [
    "What is the capital of France?",
    "What is two plus two?",
    "Who founded Zorvex Dynamics?",
    "Name a colour.",
    "What is 7 times 6?",
    "Say hello.",
]


class Loaded:
    def __init__(self, model_dir: Path) -> None:
        self.model_dir = model_dir
        self.placement: Placement = default_placement("cpu")
        self.tokenizer: PreTrainedTokenizerBase = load_tokenizer(model_dir)
        self.model: PreTrainedModel = load_model(model_dir, self.placement)
        self.stops = tuple(stop_token_ids(self.tokenizer, model_dir))

    def backend(self, batch_size: int = 16) -> TransformersBackend:
        return TransformersBackend(self.model, int(self.tokenizer.pad_token_id), self.placement, batch_size)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> Loaded:
    return Loaded(tiny_model_dir)


def greedy_alone(tiny: Loaded, question: str) -> str:
    """The greedy answer to one question, generated on its own (no batch, no padding)."""
    prompt = ChatRenderer(tiny.tokenizer).prompt_ids([{"role": "user", "content": question}])
    params = SamplingParams(max_new_tokens=MAX_NEW_TOKENS, temperature=0.0, stop_token_ids=tiny.stops)
    completion = tiny.backend(batch_size=1).generate([prompt], params)[0][0]
    return str(tiny.tokenizer.decode(list(completion.token_ids), skip_special_tokens=True))


def make_suite(rows: Sequence[dict[str, Any]], **meta: Any) -> EvalSuite:
    decoding = meta.pop("decoding", {"max_new_tokens": MAX_NEW_TOKENS})
    text = "\n".join(json.dumps(row) for row in rows)
    return parse_suite_jsonl(text, SuiteMeta.model_validate({"name": "s", "decoding": decoding, **meta}))


def run(tiny: Loaded, suite: EvalSuite, backend: Any = None, **kwargs: Any) -> SuiteResult:
    return evaluate_suite(
        backend or tiny.backend(batch_size=kwargs.get("batch_size", 16)),
        tiny.tokenizer,
        suite,
        stop_ids=tiny.stops,
        model_for_choice=tiny.model,
        **kwargs,
    )


def test_references_equal_to_the_greedy_outputs_score_100_and_others_0(tiny: Loaded) -> None:
    expected = [greedy_alone(tiny, question) for question in QUESTIONS]
    assert all(text.strip() for text in expected), "the tiny model must say something for this test"
    right = make_suite(
        [{"id": f"q{i}", "prompt": q, "reference": expected[i]} for i, q in enumerate(QUESTIONS)]
    )
    # Batches of 4 pad the prompts differently from the one-at-a-time reference run.
    result = run(tiny, right, batch_size=4)
    assert [record.output for record in result.records] == expected
    assert (result.score, result.ci_low, result.ci_high, result.n, result.failures) == (
        100.0,
        100.0,
        100.0,
        6,
        0,
    )
    assert result.decoding == {
        "greedy": True,
        "max_new_tokens": 8,
        "temperature": 0.0,
        "engine": "transformers",
    }

    wrong = make_suite(
        [{"id": f"q{i}", "prompt": q, "reference": f"not {expected[i]} zq"} for i, q in enumerate(QUESTIONS)]
    )
    assert run(tiny, wrong).score == 0.0


def test_half_right_scores_50_with_the_suite_seeded_interval(tiny: Loaded) -> None:
    rows = []
    for i, question in enumerate(QUESTIONS):
        answer = greedy_alone(tiny, question)
        rows.append({"id": f"q{i}", "prompt": question, "reference": answer if i % 2 == 0 else "zq-wrong"})
    suite = make_suite(rows)
    result = run(tiny, suite)
    assert [record.score for record in result.records] == [1.0, 0.0] * 3
    mean, low, high = bootstrap_mean_ci([100.0, 0.0] * 3, seed=ci_seed(suite.sha256), resamples=2000)
    assert (result.score, result.ci_low, result.ci_high) == (50.0, low, high)
    assert mean == 50.0 and low < 50.0 < high


def independent_loglik(tiny: Loaded, prompt: list[int], option: list[int]) -> float:
    """log p(option | prompt) from one unpadded full forward pass through the model's own lm head."""
    with torch.no_grad():
        logits = tiny.model(input_ids=torch.tensor([prompt + option])).logits[0].float()
    logprobs = logits.log_softmax(-1)
    return sum(float(logprobs[len(prompt) - 1 + j, token]) for j, token in enumerate(option))


def test_choice_items_pick_the_option_the_model_scores_highest(tiny: Loaded) -> None:
    renderer = ChatRenderer(tiny.tokenizer)
    items = [
        ("What is the capital of France?", ["Paris", "Rome", "the city of Quellport"]),
        ("What is two plus two?", ["four", "4", "five because"]),
        ("Pick one.", ["Action: get_weather", "sunny", "The capital of Italy is Rome."]),
    ]
    best_rows, worst_rows, expected_logliks = [], [], []
    for i, (question, options) in enumerate(items):
        prompt = renderer.prompt_ids([{"role": "user", "content": question}])
        logliks = [independent_loglik(tiny, prompt, renderer.text_ids(option)) for option in options]
        expected_logliks.append(logliks)
        best = options[max(range(len(options)), key=lambda k: logliks[k])]
        worst = options[min(range(len(options)), key=lambda k: logliks[k])]
        best_rows.append({"id": f"c{i}", "prompt": question, "options": options, "reference": best})
        worst_rows.append({"id": f"c{i}", "prompt": question, "options": options, "reference": worst})

    # batch_size=2 splits one item's options across scoring batches.
    result = run(tiny, make_suite(best_rows, grader="choice"), batch_size=2)
    assert result.score == 100.0
    for record, logliks in zip(result.records, expected_logliks, strict=True):
        assert record.option_logliks == pytest.approx(logliks, abs=1e-4)
    assert [record.output for record in result.records] == [row["reference"] for row in best_rows]
    assert run(tiny, make_suite(worst_rows, grader="choice")).score == 0.0


def test_choice_items_need_a_model(tiny: Loaded) -> None:
    suite = make_suite([{"prompt": "x?", "options": ["a", "b"], "reference": "a"}], grader="choice")
    with pytest.raises(ValueError, match="model_for_choice"):
        evaluate_suite(tiny.backend(), tiny.tokenizer, suite)


class RecordingBackend(TransformersBackend):
    """The real backend, remembering every prompt it was asked to generate from."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.prompts: list[list[int]] = []

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[list[Completion]]:
        self.prompts.extend(list(prompt) for prompt in prompts)
        return super().generate(prompts, params)


def test_a_prompt_longer_than_the_context_fails_before_generation(tiny: Loaded) -> None:
    long_question = "Paris Rome " * 1100  # more than the tiny model's 2048 positions minus 8
    suite = make_suite(
        [
            {"id": "short", "prompt": "Say hello.", "reference": "x"},
            {"id": "long", "prompt": long_question, "reference": "x"},
        ]
    )
    backend = RecordingBackend(tiny.model, int(tiny.tokenizer.pad_token_id), tiny.placement)
    result = evaluate_suite(backend, tiny.tokenizer, suite, stop_ids=tiny.stops)
    assert context_length_from_config(tiny.model.config.to_dict()) == 2048
    short, long = result.records
    assert short.error is None and short.score == 0.0
    assert long.score is None and not long.transient
    assert long.error is not None and "the model's context is 2048 positions" in long.error
    assert "at most 2040 tokens" in long.error
    assert len(backend.prompts) == 1, "the long prompt must never reach the backend"
    assert (result.failures, result.score) == (1, 0.0)

    explicit = evaluate_suite(backend, tiny.tokenizer, suite, stop_ids=tiny.stops, context_length=16)
    assert explicit.failures == 2


class PoisonedBackend(TransformersBackend):
    """The real backend, except that any batch holding the poisoned prompt raises (like an OOM)."""

    def __init__(self, *args: Any, poison: list[int], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.poison = poison
        self.calls = 0

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[list[Completion]]:
        self.calls += 1
        if any(list(prompt) == self.poison for prompt in prompts):
            raise RuntimeError("CUDA out of memory (simulated)")
        return super().generate(prompts, params)


def test_a_failing_batch_keeps_the_other_items_results(tiny: Loaded) -> None:
    expected = {question: greedy_alone(tiny, question) for question in QUESTIONS}
    suite = make_suite(
        [{"id": f"q{i}", "prompt": q, "reference": expected[q]} for i, q in enumerate(QUESTIONS)]
    )
    poison = ChatRenderer(tiny.tokenizer).prompt_ids([{"role": "user", "content": QUESTIONS[1]}])
    backend = PoisonedBackend(tiny.model, int(tiny.tokenizer.pad_token_id), tiny.placement, poison=poison)
    progress: list[tuple[int, int]] = []
    result = evaluate_suite(
        backend,
        tiny.tokenizer,
        suite,
        stop_ids=tiny.stops,
        batch_size=4,
        progress=lambda d, t: progress.append((d, t)),
    )
    scores = [record.score for record in result.records]
    assert scores == [1.0, None, 1.0, 1.0, 1.0, 1.0]
    failed = result.records[1]
    assert (
        failed.transient and failed.error == "generation failed: RuntimeError: CUDA out of memory (simulated)"
    )
    assert result.has_transient_failures
    # Failed batch of 4, then its 4 items alone, then the second batch of 2.
    assert backend.calls == 1 + 4 + 1
    assert progress == [(4, 6), (6, 6)]
    assert result.score == pytest.approx(500 / 6)


def test_sampled_suites_are_reproducible_from_the_seed(tiny: Loaded) -> None:
    suite = make_suite(
        [{"id": f"q{i}", "prompt": q, "reference": "x"} for i, q in enumerate(QUESTIONS)],
        decoding={"greedy": False, "temperature": 1.0, "max_new_tokens": MAX_NEW_TOKENS},
    )
    first, again, other = (run(tiny, suite, seed=seed, batch_size=3) for seed in (1, 1, 2))
    outputs = [[record.output for record in result.records] for result in (first, again, other)]
    assert outputs[0] == outputs[1]
    assert outputs[0] != outputs[2]
    assert first.decoding["seed"] == 1 and first.decoding["batch_size"] == 3
    assert other.decoding["seed"] == 2


def test_run_isolated_retries_alone_and_reports_each_item() -> None:
    def halve(batch: Sequence[int]) -> list[float]:
        if 0 in batch:
            raise ZeroDivisionError("zero")
        return [1 / value for value in batch]

    assert run_isolated([1, 2, 4], halve) == [1.0, 0.5, 0.25]
    outcomes = run_isolated([1, 0, 4], halve)
    assert outcomes[0] == 1.0 and outcomes[2] == 0.25
    assert isinstance(outcomes[1], ZeroDivisionError)


def test_context_length_is_read_from_nested_configs() -> None:
    assert context_length_from_config({"max_position_embeddings": 4096}) == 4096
    assert context_length_from_config({"n_positions": 1024}) == 1024
    assert context_length_from_config({"text_config": {"max_position_embeddings": 8192}}) == 8192
    assert context_length_from_config({"hidden_size": 64}) is None
