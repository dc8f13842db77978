"""Forgetting matrix: shape, missing cells, rendering and PNG plots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.evaluation.results import SuiteScore
from app.registry.forgetting.matrix import (
    ForgettingMatrix,
    VersionScores,
    forgetting_matrix,
    plot_forgetting,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def score(value: float, half_width: float = 3.0) -> SuiteScore:
    return SuiteScore(
        score=value, ci_low=max(0.0, value - half_width), ci_high=min(100.0, value + half_width)
    )


def sdft_lineage() -> list[VersionScores]:
    # Shaped like the SDFT skill-stream run: tool use learned first, then science.
    return [
        VersionScores("v0", "base", {"tool-use": score(41.0), "science": score(30.0)}),
        VersionScores("v1", "+tool-use", {"tool-use": score(67.0), "science": score(36.0)}),
        VersionScores(
            "v2", "+science", {"tool-use": score(61.0), "science": score(52.0), "general": score(55.0)}
        ),
    ]


def sft_lineage() -> list[VersionScores]:
    return [
        VersionScores("v0", "base", {"tool-use": score(41.0), "science": score(32.0)}),
        VersionScores("v1", "+tool-use", {"tool-use": score(70.0), "science": score(28.0)}),
        VersionScores("v2", "+science", {"tool-use": score(56.0), "science": score(50.0)}),
    ]


def test_matrix_shape_order_and_missing_cells() -> None:
    matrix = forgetting_matrix(sdft_lineage())
    assert matrix.version_ids == ("v0", "v1", "v2")
    assert matrix.labels == ("base", "+tool-use", "+science")
    assert matrix.suites == ("tool-use", "science", "general")  # order of first appearance
    assert len(matrix.cells) == 3 and all(len(row) == 3 for row in matrix.cells)
    assert matrix.cell("v0", "general") is None
    assert matrix.cell("v1", "general") is None
    assert matrix.cell("v2", "general") == score(55.0)
    assert matrix.column("tool-use") == (score(41.0), score(67.0), score(61.0))


def test_forgetting_by_suite() -> None:
    forgetting = forgetting_matrix(sdft_lineage()).forgetting_by_suite()
    assert forgetting["tool-use"] == pytest.approx(6.0)  # best earlier 67, latest 61
    assert forgetting["science"] == pytest.approx(-16.0)  # still improving
    assert forgetting["general"] is None  # scored once


def test_forgetting_is_none_when_the_newest_version_is_unscored() -> None:
    # v2 was never scored on "facts": v1's gain must not be shown as the newest version's.
    lineage = [
        VersionScores("v0", "base", {"facts": score(80.0)}),
        VersionScores("v1", "+a", {"facts": score(90.0)}),
        VersionScores("v2", "+b", {"other": score(50.0)}),
    ]
    assert forgetting_matrix(lineage).forgetting_by_suite() == {"facts": None, "other": None}


def test_to_dict_is_json_serializable_with_nulls() -> None:
    data = forgetting_matrix(sdft_lineage()).to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["versions"][0] == {"version_id": "v0", "label": "base"}
    assert data["cells"][0][2] is None
    assert data["cells"][2][2] == {"score": 55.0, "ci_low": 52.0, "ci_high": 58.0}


def test_render_table_shows_scores_and_gaps() -> None:
    table = forgetting_matrix(sdft_lineage()).render_table()
    lines = table.splitlines()
    assert lines[0].split() == ["version", "tool-use", "science", "general"]
    assert lines[2].startswith("base (v0)")
    assert "41.0 [38.0, 44.0]" in lines[2]
    assert lines[2].rstrip().endswith("-")
    assert len(lines) == 5


def test_empty_and_duplicate_versions() -> None:
    empty = forgetting_matrix([])
    assert empty == ForgettingMatrix(version_ids=(), labels=(), suites=(), cells=())
    with pytest.raises(ValueError, match="once"):
        forgetting_matrix([VersionScores("v0", "a", {}), VersionScores("v0", "b", {})])


def test_suite_score_validation() -> None:
    with pytest.raises(ValueError):
        SuiteScore(score=50.0, ci_low=60.0, ci_high=40.0)
    with pytest.raises(ValueError):
        SuiteScore(score=float("nan"), ci_low=0.0, ci_high=1.0)


def test_plot_forgetting_writes_a_png(tmp_path: Path) -> None:
    path = tmp_path / "forgetting.png"
    plot_forgetting(forgetting_matrix(sdft_lineage()), path, "SDFT skill stream")
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 5_000


def test_plot_shows_dollar_signs_as_written(tmp_path: Path) -> None:
    # matplotlib reads "$...$" as math and fails on unknown commands: names are shown literally.
    lineage = [
        VersionScores("v0", r"Qwen $\beta$ $\notacommand$", {r"cost $\nope$": score(40.0)}),
        VersionScores("v1", "+x", {r"cost $\nope$": score(50.0)}),
    ]
    path = tmp_path / "dollars.png"
    plot_forgetting(forgetting_matrix(lineage), path, r"lineage of $\bogus$")
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_plotting_nothing_raises(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        plot_forgetting(forgetting_matrix([]), tmp_path / "x.png", "empty")
