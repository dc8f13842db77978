"""The experiment's pure parts: plan checks, the learning-rate rule, and the report."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from app.experiments.continual import (
    RAW_FORMAT,
    ExperimentPlan,
    choose_learning_rate,
    lineage_matrix,
    render_report,
    summarize,
)


def test_choose_learning_rate_takes_the_best_validation_score() -> None:
    assert choose_learning_rate({1e-4: 10.0, 5e-4: 40.0, 1e-3: 30.0}) == 5e-4


def test_choose_learning_rate_breaks_ties_towards_the_smaller_rate() -> None:
    assert choose_learning_rate({1e-3: 50.0, 1e-4: 50.0, 5e-4: 20.0}) == 1e-4


def test_choose_learning_rate_needs_scores() -> None:
    with pytest.raises(ValueError, match="no validation scores"):
        choose_learning_rate({})


def test_plan_names_every_bad_field() -> None:
    with pytest.raises(ValueError) as error:
        ExperimentPlan(
            skills=("a", "a"),
            methods=("sdft", "dpo"),
            seeds=0,
            learning_rates=(-1.0,),
            max_steps=0,
            label="../escape",
        )
    message = str(error.value)
    for field in (
        "skills:",
        "methods:",
        "seeds:",
        "learning_rates:",
        "max_steps:",
        "max_new_tokens:",
        "label:",
    ):
        assert field in message


def test_quick_plan_is_one_skill_one_seed() -> None:
    plan = ExperimentPlan.quick("format", max_new_tokens={"format": 48})
    assert plan.skills == ("format",)
    assert plan.seeds == 1
    assert plan.max_steps < ExperimentPlan.full(["format"], max_new_tokens={"format": 48}).max_steps
    assert plan.label == "continual-quick"


def _cell(score: float) -> dict[str, float]:
    return {"score": score, "ci_low": score - 10, "ci_high": min(100.0, score + 10), "n": 20}


def _stage(skill: str, scores: dict[str, float], *, accepted: bool, readiness: bool | None) -> dict[str, Any]:
    return {
        "skill": skill,
        "chosen_learning_rate": 2e-4,
        "grid": [
            {"learning_rate": 2e-4, "validation_score": 40.0, "seconds_per_step": 3.0, "final_loss": 0.5},
            {"learning_rate": 1e-3, "validation_score": 35.0, "seconds_per_step": 3.1, "final_loss": 0.4},
        ],
        "readiness": None
        if readiness is None
        else {
            "ready": readiness,
            "n": 8,
            "student_rate": 0.0,
            "teacher_rate": 0.75,
            "student_nll": 2.5,
            "teacher_nll": 0.4,
            "teacher_leakage": {"n": 8, "leaked": 1, "leaked_indices": [0], "by_phrase": {}},
        },
        "test_scores": {name: _cell(value) for name, value in scores.items()},
        "gate": {"accepted": accepted, "reason": "all 2 suite(s) passed." if accepted else "1 of 2 failed."},
        "leakage": {"n": 60, "leaked": 3, "leaked_indices": [], "by_phrase": {}},
        "train_seconds": 120.0,
        "eval_seconds": 30.0,
        "wall_seconds": 160.0,
    }


def _raw() -> dict[str, Any]:
    base = {"format": 0.0, "knowledge": 0.0, "general": 100.0}
    return {
        "format": RAW_FORMAT,
        "command": "sdft experiment continual",
        "finished_at": "2026-11-29T02:00:00+00:00",
        "machine": "2 CPU cores",
        "wall_seconds": 600.0,
        "plan": ExperimentPlan(
            skills=("format", "knowledge"), max_new_tokens={"format": 48, "knowledge": 48}
        ).to_dict(),
        "base": {"name": "SmolLM2-135M-Instruct"},
        "general": {"name": "general", "kept": 60, "total": 80},
        "base_leakage": {"n": 60, "leaked": 0, "leaked_indices": [], "by_phrase": {}},
        "lineages": [
            {
                "method": "sdft",
                "seed": 0,
                "base_scores": {name: _cell(v) for name, v in base.items()},
                "stages": [
                    _stage(
                        "format",
                        {"format": 30.0, "knowledge": 0.0, "general": 95.0},
                        accepted=True,
                        readiness=True,
                    ),
                    _stage(
                        "knowledge",
                        {"format": 30.0, "knowledge": 10.0, "general": 90.0},
                        accepted=True,
                        readiness=False,
                    ),
                ],
            },
            {
                "method": "sft",
                "seed": 0,
                "base_scores": {name: _cell(v) for name, v in base.items()},
                "stages": [
                    _stage(
                        "format",
                        {"format": 60.0, "knowledge": 0.0, "general": 80.0},
                        accepted=False,
                        readiness=None,
                    ),
                    _stage(
                        "knowledge",
                        {"format": 20.0, "knowledge": 50.0, "general": 60.0},
                        accepted=False,
                        readiness=None,
                    ),
                ],
            },
        ],
        "tried": ["- a line about what was tried"],
    }


def test_lineage_matrix_has_base_then_one_row_per_stage() -> None:
    matrix = lineage_matrix(_raw()["lineages"][1])
    assert matrix.labels == ("base", "after format", "after knowledge")
    assert matrix.cell("after-knowledge", "format").score == 20.0
    assert matrix.forgetting_by_suite()["format"] == 40.0


def test_summary_separates_learning_from_keeping() -> None:
    summary = summarize(_raw()["lineages"][1], "general")
    assert summary.new_skill_mean == 55.0  # format 60 right after it, knowledge 50 right after it
    assert summary.final_skill_mean == 35.0  # format 20 and knowledge 50 at the end
    assert summary.general_final == 60.0
    assert summary.general_base == 100.0


def test_report_states_the_comparison_from_the_figures() -> None:
    text = render_report(_raw(), plot_name="continual.png", raw_name="continual.json")
    assert "The new skill right after learning it: SDFT 20.0, SFT 55.0 points (SFT higher)." in text
    assert "The general suite at the end: SDFT 90.0, SFT 60.0 points (SDFT higher)." in text
    assert "clearly better than the student in 1 of 2 SDFT stages" in text
    assert "![score per suite over stages, one panel per method](continual.png)" in text
    assert "| SFT (seed 0) | knowledge | 0.0002 |" in text
    assert "rejected" in text and "a line about what was tried" in text
    assert "| after knowledge | 20.0 [10, 30] | 50.0 [40, 60] | 60.0 [50, 70] |" in text


def test_report_refuses_another_document() -> None:
    raw = copy.deepcopy(_raw())
    raw["format"] = "something-else/1"
    with pytest.raises(ValueError, match="not a continual-experiment/1 record"):
        render_report(raw, plot_name=None, raw_name="x.json")
