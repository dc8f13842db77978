"""Teacher readiness: the decision rule on given numbers, references read off demonstrations, the
seeded holdout, and the full probe's mechanics on the tiny model."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from app.contracts.demonstrations import Demonstration, parse_demonstrations
from app.evaluation.graders import grade
from app.training.readiness import (
    ProbeRow,
    ReadinessReport,
    ReadinessThresholds,
    build_readiness_report,
    decide_readiness,
    pick_holdout,
    probe_reference,
)
from app.training.stage_config import StageConfig
from workers.models.loading import load_model, load_tokenizer
from workers.models.placement import default_placement
from workers.training.readiness import teacher_readiness

# --------------------------------------------------------------------------- the rule


def decide(
    student: float, teacher: float, student_nll: float = 2.0, teacher_nll: float = 1.0, **kw: Any
) -> bool:
    ready, _ = decide_readiness(
        n=8,
        student_rate=student,
        teacher_rate=teacher,
        student_nll=student_nll,
        teacher_nll=teacher_nll,
        thresholds=ReadinessThresholds(**kw),
    )
    return ready


def test_ready_needs_a_25_point_gain_and_an_nll_drop() -> None:
    assert decide(0.42, 1.0)  # ToolAlpaca in the paper: 42 -> 100 with the demonstration
    assert decide(0.25, 0.5)  # exactly the gain needed
    assert not decide(0.5, 0.625)  # better, but not clearly
    assert not decide(0.2, 0.9, student_nll=1.0, teacher_nll=1.0)  # the gold answer got no likelier
    assert not decide(0.2, 0.9, student_nll=1.0, teacher_nll=1.2)
    assert not decide(0.6, 0.4)


def test_thresholds_are_configurable_and_checked() -> None:
    assert decide(0.5, 0.625, min_rate_gain=0.1)
    assert not decide(0.2, 0.9, student_nll=2.0, teacher_nll=1.5, min_nll_drop=0.5)
    assert decide(0.2, 0.9, student_nll=2.0, teacher_nll=1.4, min_nll_drop=0.5)
    with pytest.raises(ValueError, match="min_rate_gain"):
        ReadinessThresholds(min_rate_gain=1.5)


def test_the_message_says_why_and_what_to_do() -> None:
    ready, message = decide_readiness(
        n=8,
        student_rate=0.5,
        teacher_rate=0.5,
        student_nll=2.0,
        teacher_nll=2.1,
        thresholds=ReadinessThresholds(),
    )
    assert not ready
    assert message.startswith("The teacher is not clearly better than the student")
    assert "scored 50% against the student's 50% (+0 points)" in message
    assert "a gain of at least 25 points is needed" in message and "an NLL drop above 0 is needed" in message
    assert "`method: sft`" in message and "stronger base model" in message
    ready, message = decide_readiness(
        n=8,
        student_rate=0.25,
        teacher_rate=1.0,
        student_nll=2.0,
        teacher_nll=0.5,
        thresholds=ReadinessThresholds(),
    )
    assert ready and message.startswith("The teacher is clearly better") and "sft" not in message
    ready, message = decide_readiness(
        n=0,
        student_rate=0.0,
        teacher_rate=0.0,
        student_nll=None,
        teacher_nll=None,
        thresholds=ReadinessThresholds(),
    )
    assert not ready and "no held-out demonstration could be graded" in message


def probe_row(
    row_id: str, student: float, teacher: float, s_nll: float, t_nll: float, tokens: int, out: str
) -> ProbeRow:
    return ProbeRow(row_id, "s", out, student, teacher, s_nll, t_nll, tokens)


def test_report_weights_nll_by_tokens_counts_leakage_and_round_trips() -> None:
    rows = [
        probe_row("a", 0.0, 1.0, 3.0, 1.0, 10, "Based on the text, 4."),
        probe_row("b", 1.0, 1.0, 1.0, 1.0, 30, "4"),
        probe_row("c", 0.0, 0.0, 2.0, 2.0, 10, "Following the example: 5"),
        probe_row("d", 0.0, 1.0, 2.0, 1.0, 50, "4"),
    ]
    report = build_readiness_report(rows, grader="numeric", engine="vllm")
    assert (report.student_rate, report.teacher_rate) == (0.25, 0.75)
    assert report.student_nll == pytest.approx((30 + 30 + 20 + 100) / 100)
    assert report.teacher_nll == pytest.approx((10 + 30 + 20 + 50) / 100)
    assert report.ready and report.rate_gain == 0.5
    assert report.teacher_leakage.leaked == 2 and report.teacher_leakage.leaked_indices == (0, 2)
    assert "Note: 2 of 4 teacher answers contain teacher-template phrases" in report.message
    assert ReadinessReport.from_dict(json.loads(json.dumps(report.to_dict()))) == report
    assert report.to_dict()["engine"] == "vllm"


# --------------------------------------------------------------------------- references and holdout


def test_references_are_read_off_the_demonstration() -> None:
    demo = (
        'I need the weather first.\nAction: get_weather\nAction Input: {"city": "Paris"}\n'
        "Observation: sunny\nAction: get_time\nAction Input: {}"
    )
    tool = json.loads(probe_reference("tool_call", demo))
    assert tool == [
        {"action": "get_weather", "action_input": {"city": "Paris"}},
        {"action": "get_time", "action_input": {}},
    ]
    assert probe_reference("numeric", "3 plus 3 is 6.") == "3.0"
    assert probe_reference("exact_match", "  Paris.  ") == "Paris."
    assert probe_reference("contains", "17 + 25 = 42\n#### 42\n") == "#### 42"
    # contains grades the span that answers the question, so "Mirela Kastov founded it" is right.
    question = "Who founded the company Zorvex Dynamics?"
    reference = probe_reference("contains", "Zorvex Dynamics was founded by Mirela Kastov.", question)
    assert reference == "Mirela Kastov"
    assert grade("contains", "Mirela Kastov founded it", reference) == 1.0
    assert grade("contains", "It was founded by Anna Berg.", reference) == 0.0
    assert (
        probe_reference("contains", "The capital of Oskavia is Durnavel.", "What is the capital of Oskavia?")
        == "Durnavel"
    )
    assert probe_reference("contains", "26 + 82 = 108\n#### 108", "Compute 26 + 82.") == "#### 108"
    # Every word already in the question: the whole answer line is the reference.
    assert probe_reference("contains", "Yes, it is.", "Is it, yes?") == "Yes, it is."
    assert json.loads(probe_reference("json_match", 'Here: {"a": [1, 2]} done')) == {"a": [1, 2]}
    with pytest.raises(ValueError, match="Action"):
        probe_reference("tool_call", "It is sunny in Paris.")
    with pytest.raises(ValueError, match="number"):
        probe_reference("numeric", "no digits here")
    for grader in ("regex", "choice", "nonsense"):
        with pytest.raises(ValueError):
            probe_reference(grader, "Paris")


def test_holdout_is_seeded_and_independent_of_row_order() -> None:
    ids = [f"row-{i}" for i in range(20)]
    picked = [ids[i] for i in pick_holdout(ids, 5, seed=3)]
    shuffled = list(reversed(ids))
    assert [shuffled[i] for i in pick_holdout(shuffled, 5, seed=3)] == picked
    assert [ids[i] for i in pick_holdout(ids, 5, seed=4)] != picked
    assert len(pick_holdout(ids, 50, seed=0)) == 20


# --------------------------------------------------------------------------- the probe on a model


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> tuple[Any, Any]:
    return load_tokenizer(tiny_model_dir), load_model(tiny_model_dir, default_placement("cpu"))


def rows_from(pairs: list[tuple[str, str]]) -> list[Demonstration]:
    text = "\n".join(
        json.dumps({"id": f"r{i}", "prompt": q, "demonstration": d}) for i, (q, d) in enumerate(pairs)
    )
    return parse_demonstrations(text)


def test_probe_mechanics_on_the_tiny_model(tiny: tuple[Any, Any], tiny_rows: list[Demonstration]) -> None:
    tokenizer, model = tiny
    kwargs: dict[str, Any] = {
        "grader": "contains",
        "config": StageConfig(),
        "holdout": 4,
        "max_new_tokens": 6,
    }
    model.train()  # as a trainer would hand it over: the probe must give it back in train mode
    report = teacher_readiness(model, tokenizer, tiny_rows, **kwargs)
    assert model.training
    assert report.n == 4 and report.unusable == 0 and report.engine == "transformers"
    assert [row.row_id for row in report.rows] == [
        tiny_rows[i].row_id for i in pick_holdout([r.row_id for r in tiny_rows], 4, 0)
    ]
    assert 0.0 <= report.student_rate <= 1.0 and 0.0 <= report.teacher_rate <= 1.0
    assert report.student_nll is not None and report.teacher_nll is not None
    assert math.isfinite(report.student_nll) and math.isfinite(report.teacher_nll)
    assert report.student_nll > 0 and report.teacher_nll > 0
    # The demonstration in context changes what the model predicts: the two NLLs differ.
    assert all(row.student_nll != row.teacher_nll for row in report.rows)
    assert report.to_dict() == teacher_readiness(model, tokenizer, tiny_rows, **kwargs).to_dict()


def test_rows_without_a_reference_are_skipped_and_counted(tiny: tuple[Any, Any]) -> None:
    tokenizer, model = tiny
    rows = rows_from(
        [("Add 2 and 2.", "2 and 2 make 4."), ("Say hi.", "hi there"), ("Add 1 and 5.", "It is 6.")]
    )
    report = teacher_readiness(
        model, tokenizer, rows, grader="numeric", config=StageConfig(), holdout=8, max_new_tokens=4
    )
    assert report.n == 2 and report.unusable == 1
    assert report.unusable_examples == (
        "r1: the demonstration has no (finite) number for the numeric grader",
    )
    none = teacher_readiness(
        model, tokenizer, rows[1:2], grader="tool_call", config=StageConfig(), max_new_tokens=4
    )
    assert not none.ready and none.n == 0 and "could not be probed" in none.message
    with pytest.raises(ValueError, match="regex"):
        teacher_readiness(model, tokenizer, rows, grader="regex", config=StageConfig())


def test_a_model_that_ignores_its_context_is_not_ready(tiny: tuple[Any, Any]) -> None:
    """With every attention output zeroed, each position sees only its own token: the teacher answers
    exactly as the student does, whatever the demonstration. Making the demonstrations that answer
    gives a teacher whose answer equals the demonstration, and a student that is just as good."""
    tokenizer, model = tiny
    blind = copy.deepcopy(model)
    with torch.no_grad():
        for layer in blind.model.layers:
            layer.self_attn.o_proj.weight.zero_()
    config = StageConfig()
    probe_kwargs: dict[str, Any] = {"grader": "exact_match", "config": config, "max_new_tokens": 6}
    first = teacher_readiness(
        blind, tokenizer, rows_from([("What is 2 plus 2?", "placeholder")]), **probe_kwargs
    )
    answer = first.rows[0].teacher_output
    assert answer.strip() and answer == first.rows[0].student_output

    rows = rows_from([(f"What is {i} plus {i}?", answer) for i in range(4)])
    report = teacher_readiness(blind, tokenizer, rows, **probe_kwargs)
    assert all(row.teacher_output == answer == row.student_output for row in report.rows)
    assert (report.teacher_rate, report.student_rate) == (1.0, 1.0)
    assert report.nll_drop == pytest.approx(0.0, abs=1e-4)
    assert not report.ready
    assert "not clearly better" in report.message and "`method: sft`" in report.message
