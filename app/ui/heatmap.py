"""The forgetting matrix as a heatmap: a colour per score (0..100 points), its interval on hover."""

from __future__ import annotations

from dataclasses import dataclass

from app.registry.forgetting.matrix import ForgettingMatrix

# Red (0 points) through yellow (50) to green (100): a diverging scale people read without a legend.
LOW, MID, HIGH = (215, 48, 39), (254, 224, 139), (26, 152, 80)
UNSCORED = "#e5e7eb"


def _mix(a: tuple[int, int, int], b: tuple[int, int, int], t: float) -> tuple[int, int, int]:
    r, g, bl = (round(x + (y - x) * t) for x, y in zip(a, b, strict=True))
    return r, g, bl


def heat_colour(score: float | None) -> str:
    """The cell colour of a score in points; scores outside 0..100 take the end colours."""
    if score is None:
        return UNSCORED
    t = min(1.0, max(0.0, score / 100.0))
    rgb = _mix(LOW, MID, t * 2) if t < 0.5 else _mix(MID, HIGH, (t - 0.5) * 2)
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def ink_colour(background: str) -> str:
    """Black or white text, whichever reads better on `background` (#rrggbb), by WCAG luminance."""
    channels = [int(background[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    luminance = 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]
    # Contrast with black is (L + 0.05) / 0.05, with white 1.05 / (L + 0.05): equal at L ≈ 0.179.
    return "#000000" if luminance > 0.179 else "#ffffff"


@dataclass(frozen=True)
class HeatCell:
    text: str
    title: str
    background: str
    ink: str


@dataclass(frozen=True)
class HeatRow:
    version_id: str
    label: str
    cells: tuple[HeatCell, ...]


@dataclass(frozen=True)
class Heatmap:
    suites: tuple[str, ...]
    rows: tuple[HeatRow, ...]


def heatmap(matrix: ForgettingMatrix) -> Heatmap:
    rows = []
    for version_id, label, scores in zip(matrix.version_ids, matrix.labels, matrix.cells, strict=True):
        cells = []
        for suite, cell in zip(matrix.suites, scores, strict=True):
            background = heat_colour(None if cell is None else cell.score)
            if cell is None:
                cells.append(HeatCell("–", f"{suite} on {label}: not scored", background, "#000000"))
                continue
            interval = f"interval [{cell.ci_low:.1f}, {cell.ci_high:.1f}]"
            title = f"{suite} on {label}: {cell.score:.1f} points, {interval}"
            cells.append(HeatCell(f"{cell.score:.1f}", title, background, ink_colour(background)))
        rows.append(HeatRow(version_id, label, tuple(cells)))
    return Heatmap(matrix.suites, tuple(rows))
