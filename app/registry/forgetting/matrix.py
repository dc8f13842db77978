"""The forgetting matrix: every model version in a lineage × every suite, with confidence intervals.

Rows are versions in lineage order, columns are suites in order of first appearance; a cell is
None when that version was never scored on that suite (e.g. a suite added after it was trained).
Scores are points (0..100).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.evaluation.results import SuiteScore

if TYPE_CHECKING:
    from matplotlib.axes import Axes


@dataclass(frozen=True)
class VersionScores:
    """One model version's scores, keyed by suite name (mapping order = column order on first use)."""

    version_id: str
    label: str
    scores: Mapping[str, SuiteScore]


@dataclass(frozen=True)
class ForgettingMatrix:
    version_ids: tuple[str, ...]
    labels: tuple[str, ...]
    suites: tuple[str, ...]
    # cells[row][column]: version row × suite column.
    cells: tuple[tuple[SuiteScore | None, ...], ...]

    def cell(self, version_id: str, suite: str) -> SuiteScore | None:
        return self.cells[self.version_ids.index(version_id)][self.suites.index(suite)]

    def column(self, suite: str) -> tuple[SuiteScore | None, ...]:
        index = self.suites.index(suite)
        return tuple(row[index] for row in self.cells)

    def forgetting_by_suite(self) -> dict[str, float | None]:
        """Per suite: best earlier score minus the newest version's score (positive = forgotten,
        negative = improved since); None when the newest version was not scored on the suite (an
        older version's figure would read as the newest's) or no earlier version was."""
        forgetting: dict[str, float | None] = {}
        for suite in self.suites:
            column = self.column(suite)
            newest = column[-1] if column else None
            earlier = [cell.score for cell in column[:-1] if cell is not None]
            forgetting[suite] = max(earlier) - newest.score if newest is not None and earlier else None
        return forgetting

    def to_dict(self) -> dict[str, Any]:
        return {
            "versions": [
                {"version_id": version_id, "label": label}
                for version_id, label in zip(self.version_ids, self.labels, strict=True)
            ],
            "suites": list(self.suites),
            "cells": [
                [
                    None
                    if cell is None
                    else {"score": cell.score, "ci_low": cell.ci_low, "ci_high": cell.ci_high}
                    for cell in row
                ]
                for row in self.cells
            ],
            "forgetting": self.forgetting_by_suite(),
        }

    def render_table(self) -> str:
        """Fixed-width text table: one row per version, "score [low, high]" per suite, "-" if unscored."""
        headers = ["version", *self.suites]
        body = [
            [
                f"{label} ({version_id})",
                *(
                    "-" if cell is None else f"{cell.score:.1f} [{cell.ci_low:.1f}, {cell.ci_high:.1f}]"
                    for cell in row
                ),
            ]
            for version_id, label, row in zip(self.version_ids, self.labels, self.cells, strict=True)
        ]
        widths = [max(len(text) for text in column) for column in zip(headers, *body, strict=True)]

        def line(cells: Sequence[str]) -> str:
            return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()

        rows = [line(headers), line(["-" * width for width in widths]), *(line(cells) for cells in body)]
        return "\n".join(rows)


def forgetting_matrix(versions: Sequence[VersionScores]) -> ForgettingMatrix:
    """Build the matrix from versions in lineage order; duplicate version ids raise ValueError."""
    version_ids = [version.version_id for version in versions]
    if len(set(version_ids)) != len(version_ids):
        raise ValueError("each version may appear once in a lineage")
    suites: list[str] = []
    for version in versions:
        suites.extend(suite for suite in version.scores if suite not in suites)
    cells = tuple(tuple(version.scores.get(suite) for suite in suites) for version in versions)
    return ForgettingMatrix(
        version_ids=tuple(version_ids),
        labels=tuple(version.label for version in versions),
        suites=tuple(suites),
        cells=cells,
    )


# --------------------------------------------------------------------------- plots


def _literal(text: str) -> str:
    """text shown as written: matplotlib reads "$...$" in any label as math, and fails on bad math."""
    return text.replace("$", r"\$")


def _draw_matrix(axes: Axes, matrix: ForgettingMatrix, color_index: Mapping[str, int]) -> None:
    from matplotlib import colormaps

    palette = colormaps["tab10"]
    positions = list(range(len(matrix.version_ids)))
    for suite in matrix.suites:
        column = matrix.column(suite)
        # NaN leaves a gap where a version was not scored on this suite.
        scores = [math.nan if cell is None else cell.score for cell in column]
        below = [math.nan if cell is None else max(0.0, cell.score - cell.ci_low) for cell in column]
        above = [math.nan if cell is None else max(0.0, cell.ci_high - cell.score) for cell in column]
        axes.errorbar(
            positions,
            scores,
            yerr=[below, above],
            marker="o",
            capsize=3,
            linewidth=1.8,
            color=palette(color_index[suite] % palette.N),
            label=_literal(suite),
        )
    axes.set_xticks(
        positions, [_literal(label) for label in matrix.labels], rotation=30 if len(positions) > 4 else 0
    )
    axes.set_xlim(-0.5, max(0.5, len(positions) - 0.5))
    axes.set_ylim(0, 100)
    axes.set_xlabel("model version (lineage order)")
    axes.grid(True, alpha=0.3)


def plot_forgetting(matrix: ForgettingMatrix, path: str | Path, title: str) -> None:
    """Write a PNG: one line per suite across versions, CI error bars, y axis 0–100 points."""
    if not matrix.version_ids:
        raise ValueError("nothing to plot: the matrix has no versions")
    import matplotlib

    matplotlib.use("Agg")  # headless: workers and the API have no display
    from matplotlib.figure import Figure

    figure = Figure(figsize=(max(6.0, 1.3 * len(matrix.version_ids) + 3.0), 4.5))
    axes = figure.add_subplot()
    _draw_matrix(axes, matrix, {suite: index for index, suite in enumerate(matrix.suites)})
    axes.set_ylabel("score (points)")
    axes.set_title(_literal(title))
    axes.legend(loc="best", fontsize="small")
    figure.savefig(Path(path), format="png", dpi=120, bbox_inches="tight")
