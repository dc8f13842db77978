"""The experiment end to end on a tiny model: recipes, the learning-rate grid on validation suites,
auto's choice by the probe, the gate, the report, the plot and the raw record; a second run with the
same work directory resumes instead of retraining."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from app.evaluation.suites import DecodingConfig, SuiteMeta, parse_suite_jsonl
from workers.experiments.continual.plan import RAW_FORMAT, ExperimentPlan
from workers.experiments.continual.report import write_report
from workers.experiments.continual.runner import ContinualExperiment, Material


def _anything(name: str) -> object:
    # A tiny random model answers nothing right, so the stand-in general suites accept any answer.
    rows = "".join(
        json.dumps({"id": f"g{i}", "prompt": f"Say {i}.", "reference": ".*"}) + "\n" for i in range(4)
    )
    meta = SuiteMeta(name=name, grader="regex", decoding=DecodingConfig(max_new_tokens=4), tolerance=5.0)
    return parse_suite_jsonl(rows, meta)


def test_experiment_runs_every_recipe_and_resumes(tiny_model_dir: Path, tmp_path: Path) -> None:
    plan = ExperimentPlan(
        skills=("format", "knowledge"),
        recipes=("sft", "sft_retain", "sdft", "auto"),
        seeds=1,
        learning_rates=(1e-3, 1e-2),
        steps_by_skill={"format": 1, "knowledge": 1},
        batch_size=4,
        micro_batch_size=4,
        max_new_tokens={"format": 6, "knowledge": 6},
        label="tiny",
    )
    material = Material.from_examples(plan)
    material = replace(material, general=_anything("general"), general_validation=_anything("general-val"))
    lines: list[str] = []
    experiment = ContinualExperiment(
        plan,
        base_dir=tiny_model_dir,
        work_dir=tmp_path / "work",
        out_dir=tmp_path / "out",
        log=lines.append,
        command="sdft experiment continual --test",
        material=material,  # type: ignore[arg-type]
    )
    raw = experiment.run()

    assert raw["format"] == RAW_FORMAT
    assert raw["general"] == {"name": "general", "total": 4, "base_right": 4}
    # auto runs last: it trains with the rates chosen for the methods it picks.
    assert [(lin["recipe"], lin["seed"]) for lin in raw["lineages"]] == [
        ("sft", 0),
        ("sft_retain", 0),
        ("sdft", 0),
        ("auto", 0),
    ]
    assert {(row["recipe"], row["learning_rate"]) for row in raw["grid"]} == {
        (recipe, rate) for recipe in ("sft", "sft_retain", "sdft") for rate in (1e-3, 1e-2)
    }
    assert sum(row["chosen"] for row in raw["grid"]) == 3
    for lineage in raw["lineages"]:
        first, second = lineage["stages"]
        assert first["learning_rate"] == raw["chosen_rates"][first["method"]]
        for stage in (first, second):
            assert set(stage["test_scores"]) == {"format", "knowledge", "general", "general-choice"}
            assert stage["general_delta"] == 0.0  # every answer counts as right on the stand-in suite
            assert isinstance(stage["general_choice_delta"], float)
            assert (stage["readiness"] is not None) == (lineage["recipe"] in ("sdft", "auto"))
            assert stage["training"]["steps"] == 1 and stage["training"]["probe_divergence"]
        assert [row["role"] for row in first["gate"]["report"]["rows"]] == ["prior", "new_skill"]
        # The gate holds general knowledge to the choice suite (greedy answers are too noisy at 135M).
        assert [row["suite"] for row in second["gate"]["report"]["rows"]] == [
            "format",
            "general-choice",
            "knowledge",
        ]
    auto = raw["lineages"][-1]
    for stage in auto["stages"]:
        # The tiny model's teacher is no better than its student: auto falls back to sft_retain.
        assert stage["method"] == "sft_retain" and "sft_retain" in stage["choice"]["reason"]

    report = (tmp_path / "out" / "tiny.md").read_text()
    assert "| `sft_retain` |" in report and "Acceptance" in report and "general (choices)" in report
    assert (tmp_path / "out" / "tiny.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "out" / "tiny.md").unlink()
    write_report(tmp_path / "out" / "tiny.json", log=lines.append)  # `--report-only`
    assert (tmp_path / "out" / "tiny.md").read_text() == report

    lines.clear()
    again = ContinualExperiment(
        plan,
        base_dir=tiny_model_dir,
        work_dir=tmp_path / "work",
        out_dir=tmp_path / "out",
        log=lines.append,
        material=material,  # type: ignore[arg-type]
    ).run()
    assert not any("step 1/1" in line for line in lines), "nothing is retrained"
    assert [s["test_scores"] for lin in again["lineages"] for s in lin["stages"]] == [
        s["test_scores"] for lin in raw["lineages"] for s in lin["stages"]
    ]
