"""Step-metric charts as inline SVG, laid out here: no chart library and no script draws them.

A chart is one metric against the step, one line per stage (stages restart their step count)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

WIDTH, HEIGHT = 560, 180
LEFT, RIGHT, TOP, BOTTOM = 48, 10, 10, 24  # margins around the plot area, in pixels
# More points than pixels only costs bytes: long stages are thinned to about one point per pixel.
MAX_POINTS = 300

Points = Sequence[tuple[float, float]]


@dataclass(frozen=True)
class Tick:
    position: float
    label: str


@dataclass(frozen=True)
class Line:
    label: str
    colour: int  # index into the stylesheet's series colours
    points: str  # an SVG polyline's `points`
    end: tuple[float, float]  # where the last point is drawn as a dot


@dataclass(frozen=True)
class Chart:
    metric: str
    title: str
    lines: tuple[Line, ...]
    x_ticks: tuple[Tick, ...]
    y_ticks: tuple[Tick, ...]
    latest: str  # the last value of the last line, as text
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    top: int = TOP
    right: int = WIDTH - RIGHT
    bottom: int = HEIGHT - BOTTOM


def thin(points: Points, limit: int = MAX_POINTS) -> list[tuple[float, float]]:
    """Every k-th point so at most about `limit` remain, always keeping the last."""
    if len(points) <= limit:
        return list(points)
    stride = math.ceil(len(points) / limit)
    kept = list(points[::stride])
    if kept[-1] != points[-1]:
        kept.append(points[-1])
    return kept


def _span(low: float, high: float) -> tuple[float, float]:
    """A non-empty range around the data (a flat line sits mid-chart)."""
    if high > low:
        return low, high
    pad = abs(low) * 0.1 or 1.0
    return low - pad, high + pad


def tick_label(value: float) -> str:
    return f"{value:.3g}"


def metric_chart(metric: str, title: str, series: Sequence[tuple[str, Points]]) -> Chart:
    """Lay out `series` ((label, [(step, value), ...]) per stage) in one chart with shared axes."""
    drawn = [(label, thin(points)) for label, points in series if points]
    if not drawn:
        return Chart(metric, title, (), (), (), latest="–")
    xs = [x for _, points in drawn for x, _ in points]
    ys = [y for _, points in drawn for _, y in points]
    x_low, x_high = _span(min(xs), max(xs))
    y_low, y_high = _span(min(ys), max(ys))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def px(x: float) -> float:
        return round(LEFT + (x - x_low) / (x_high - x_low) * plot_w, 1)

    def py(y: float) -> float:
        return round(TOP + (y_high - y) / (y_high - y_low) * plot_h, 1)

    lines = tuple(
        Line(
            label=label,
            colour=index,
            points=" ".join(f"{px(x)},{py(y)}" for x, y in points),
            end=(px(points[-1][0]), py(points[-1][1])),
        )
        for index, (label, points) in enumerate(drawn)
    )
    y_mid = (y_low + y_high) / 2
    y_ticks = tuple(Tick(py(v), tick_label(v)) for v in (y_high, y_mid, y_low))
    x_ticks = tuple(Tick(px(v), f"{v:g}") for v in sorted({min(xs), max(xs)}))
    return Chart(metric, title, lines, x_ticks, y_ticks, latest=tick_label(drawn[-1][1][-1][1]))
