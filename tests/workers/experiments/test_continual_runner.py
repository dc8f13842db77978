"""The experiment runner end to end on a tiny model: both methods, a learning-rate grid, the gate, the
report, the plot and the raw record; a second run with the same work directory resumes, not redoes."""

from __future__ import annotations

import json
from pathlib import Path

from app.evaluation.suites import DecodingConfig, SuiteMeta, parse_suite_jsonl
from app.experiments.continual import RAW_FORMAT, ExperimentPlan
from workers.experiments.continual import ContinualExperiment, rewrite_report


def _general() -> object:
    # A tiny random model answers nothing right, so the stand-in general suite accepts any answer.
    rows = "".join(
        json.dumps({"id": f"g{i}", "prompt": f"Say {i}.", "reference": ".*"}) + "\n" for i in range(4)
    )
    meta = SuiteMeta(name="general", grader="regex", decoding=DecodingConfig(max_new_tokens=4), tolerance=5.0)
    return parse_suite_jsonl(rows, meta)


def test_experiment_runs_both_methods_and_resumes(tiny_model_dir: Path, tmp_path: Path) -> None:
    plan = ExperimentPlan(
        skills=("format", "knowledge"),
        learning_rates=(1e-3, 1e-2),
        max_steps=1,
        batch_size=4,
        lora_rank=4,
        max_new_tokens={"format": 6, "knowledge": 6},
        label="tiny",
    )
    lines: list[str] = []
    experiment = ContinualExperiment(
        plan,
        base_dir=tiny_model_dir,
        work_dir=tmp_path / "work",
        out_dir=tmp_path / "out",
        log=lines.append,
        command="sdft experiment continual --test",
        general_source=_general(),  # type: ignore[arg-type]
    )
    raw = experiment.run()

    assert raw["format"] == RAW_FORMAT
    assert raw["general"] == {"name": "general", "kept": 4, "total": 4}
    assert [(lineage["method"], lineage["seed"]) for lineage in raw["lineages"]] == [("sdft", 0), ("sft", 0)]
    for lineage in raw["lineages"]:
        first, second = lineage["stages"]
        assert [run["learning_rate"] for run in first["grid"]] == [1e-3, 1e-2]
        assert all(run["validation_score"] is not None for run in first["grid"])
        assert first["chosen_learning_rate"] in (1e-3, 1e-2)
        # One rate per method: the second stage trains only the rate the first stage chose.
        assert [run["learning_rate"] for run in second["grid"]] == [first["chosen_learning_rate"]]
        assert second["chosen_learning_rate"] == first["chosen_learning_rate"]
        for stage in (first, second):
            assert set(stage["test_scores"]) == {"format", "knowledge", "general"}
            assert (stage["readiness"] is not None) == (lineage["method"] == "sdft")
        assert [row["role"] for row in first["gate"]["report"]["rows"]] == ["prior", "new_skill"]
        assert [row["suite"] for row in second["gate"]["report"]["rows"]] == [
            "format",
            "general",
            "knowledge",
        ]
    sdft_grid = raw["lineages"][0]["stages"][0]["grid"]
    assert all(run["rollout_leak_fraction"] is not None for run in sdft_grid)
    assert all(run["rollout_leak_fraction"] is None for run in raw["lineages"][1]["stages"][0]["grid"])

    report = (tmp_path / "out" / "tiny.md").read_text()
    assert "| SDFT (seed 0) | format |" in report and "| SFT (seed 0) | format |" in report
    assert (tmp_path / "out" / "tiny.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "out" / "tiny.json").read_text())["lineages"] == raw["lineages"]
    assert sum("step 1/1" in line for line in lines) == 6  # 2 methods x (2 rates + 1 rate)
    (tmp_path / "out" / "tiny.md").unlink()
    rewrite_report(tmp_path / "out" / "tiny.json", log=lines.append)  # `--report-only`
    assert (tmp_path / "out" / "tiny.md").read_text() == report

    lines.clear()
    again = experiment.run()
    assert not any("step 1/1" in line for line in lines)  # nothing retrained
    assert [stage["test_scores"] for lineage in again["lineages"] for stage in lineage["stages"]] == [
        stage["test_scores"] for lineage in raw["lineages"] for stage in lineage["stages"]
    ]
