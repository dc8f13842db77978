"""Pure layout for the pages: the lineage graph, heatmap colours, metric charts, a job's stage notes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.evaluation.results import SuiteScore
from app.registry.forgetting.matrix import VersionScores, forgetting_matrix
from app.ui.charts import HEIGHT, LEFT, MAX_POINTS, TOP, WIDTH, metric_chart, thin
from app.ui.heatmap import UNSCORED, heat_colour, heatmap, ink_colour
from app.ui.job_view import metric_charts, stage_notes
from app.ui.lineage_graph import COLUMN_PITCH, NODE_H, NODE_W, PAD, ROW_PITCH, GraphNode, layout_lineage

# --------------------------------------------------------------------------- lineage graph


def node(version_id: str, parent: str | None, status: str = "accepted", *aliases: str) -> GraphNode:
    return GraphNode(version_id, f"label {version_id}", status, parent, tuple(aliases))


def positions(layout: Any) -> dict[str, tuple[int, int]]:
    return {p.node.id: (p.x, p.y) for p in layout.nodes}


def test_a_chain_is_one_straight_row() -> None:
    layout = layout_lineage([node("mv_3", "mv_2"), node("mv_1", None), node("mv_2", "mv_1")])
    assert positions(layout) == {
        "mv_1": (PAD, PAD),
        "mv_2": (PAD + COLUMN_PITCH, PAD),
        "mv_3": (PAD + 2 * COLUMN_PITCH, PAD),
    }
    assert len(layout.edges) == 2
    assert layout.width == 2 * PAD + 2 * COLUMN_PITCH + NODE_W


def test_a_branch_opens_a_row_below_and_edges_join_parent_to_child() -> None:
    versions = [
        node("mv_1", None),
        node("mv_2", "mv_1"),
        node("mv_3", "mv_1", "rejected"),  # a second job from the same parent
        node("mv_4", "mv_2", "candidate", "production"),
    ]
    layout = layout_lineage(versions)
    placed = positions(layout)
    assert placed["mv_1"][1] == placed["mv_2"][1] == placed["mv_4"][1] == PAD
    assert placed["mv_3"] == (PAD + COLUMN_PITCH, PAD + ROW_PITCH)
    rejected = [edge for edge in layout.edges if edge.status == "rejected"]
    assert len(rejected) == 1
    x1, y1 = PAD + NODE_W, PAD + NODE_H // 2
    x2, y2 = PAD + COLUMN_PITCH, PAD + ROW_PITCH + NODE_H // 2
    assert rejected[0].path.startswith(f"M{x1},{y1} ") and rejected[0].path.endswith(f" {x2},{y2}")
    tagged = next(p for p in layout.nodes if p.node.id == "mv_4")
    assert tagged.alias_text == "⚑ production"


def test_a_version_whose_parent_is_not_shown_starts_its_own_tree() -> None:
    layout = layout_lineage([node("mv_9", "mv_older"), node("mv_a", None)])
    assert {p.node.id: p.x for p in layout.nodes} == {"mv_9": PAD, "mv_a": PAD}
    assert layout.edges == ()


def test_long_labels_are_clipped_and_deep_lineages_do_not_recurse() -> None:
    chain = [GraphNode("mv_00000", "a very long base model name indeed", "accepted", None)]
    chain += [GraphNode(f"mv_{i:05d}", f"v{i}", "accepted", f"mv_{i - 1:05d}") for i in range(1, 3000)]
    layout = layout_lineage(chain)
    assert len(layout.nodes) == 3000 and len(layout.edges) == 2999
    first = next(p for p in layout.nodes if p.node.id == "mv_00000")
    assert first.label.endswith("…") and len(first.label) <= 22


def test_an_empty_registry_lays_out_to_an_empty_graph() -> None:
    layout = layout_lineage([])
    assert layout.nodes == () and layout.edges == () and layout.width > 0


# --------------------------------------------------------------------------- heatmap


def test_heat_colours_run_red_yellow_green_and_clamp() -> None:
    assert heat_colour(0) == "#d73027"
    assert heat_colour(50) == "#fee08b"
    assert heat_colour(100) == "#1a9850"
    assert heat_colour(-5) == heat_colour(0) and heat_colour(140) == heat_colour(100)
    assert heat_colour(None) == UNSCORED
    greens = [int(heat_colour(score)[3:5], 16) for score in (0, 10, 20, 30, 40, 50)]
    assert greens == sorted(greens), "the scale rises steadily from red to yellow"


def test_text_on_a_cell_is_whichever_of_black_and_white_reads_better() -> None:
    assert ink_colour("#fee08b") == "#000000"
    assert ink_colour("#1a9850") == "#000000"  # luminance 0.23: black contrasts 5.7, white 3.7
    assert ink_colour("#000000") == "#ffffff" and ink_colour("#ffffff") == "#000000"
    assert ink_colour("#d73027") == "#ffffff"


def test_heatmap_cells_carry_score_colour_and_interval() -> None:
    matrix = forgetting_matrix(
        [
            VersionScores("mv_1", "base", {"general": SuiteScore(score=80.0, ci_low=70.0, ci_high=90.0)}),
            VersionScores(
                "mv_2",
                "v1 alpha",
                {
                    "general": SuiteScore(score=75.5, ci_low=65.0, ci_high=85.0),
                    "alpha": SuiteScore(score=40.0, ci_low=20.0, ci_high=60.0),
                },
            ),
        ]
    )
    heat = heatmap(matrix)
    assert heat.suites == ("general", "alpha")
    base, trained = heat.rows
    assert base.cells[1].text == "–" and base.cells[1].background == UNSCORED
    assert "not scored" in base.cells[1].title
    cell = trained.cells[0]
    assert cell.text == "75.5" and cell.background == heat_colour(75.5)
    assert cell.title == "general on v1 alpha: 75.5 points, interval [65.0, 85.0]"


# --------------------------------------------------------------------------- charts


def test_a_chart_maps_steps_and_values_into_the_plot_area() -> None:
    chart = metric_chart("loss", "loss", [("stage 1", [(1, 2.0), (2, 1.0), (3, 0.0)])])
    (line,) = chart.lines
    points = [tuple(map(float, p.split(","))) for p in line.points.split()]
    assert points[0] == (LEFT, TOP)  # first step, highest value: top left
    assert points[-1] == (chart.right, chart.bottom) == (WIDTH - 10, HEIGHT - 24)
    assert line.end == points[-1]
    assert [t.label for t in chart.y_ticks] == ["2", "1", "0"]
    assert [t.label for t in chart.x_ticks] == ["1", "3"]
    assert chart.latest == "0"


def test_stages_share_axes_and_flat_or_single_points_still_draw() -> None:
    chart = metric_chart("probe_score", "probe score", [("s1", [(1, 0.5)]), ("s2", [(1, 0.5), (2, 0.5)])])
    assert len(chart.lines) == 2 and [line.colour for line in chart.lines] == [0, 1]
    for line in chart.lines:
        for pair in line.points.split():
            x, y = map(float, pair.split(","))
            assert LEFT <= x <= chart.right and TOP <= y <= chart.bottom
    assert metric_chart("loss", "loss", [("s1", [])]).lines == ()


def test_long_series_are_thinned_keeping_the_last_point() -> None:
    points = [(float(i), float(i)) for i in range(1, 1001)]
    kept = thin(points)
    assert len(kept) <= MAX_POINTS + 1 and kept[0] == points[0] and kept[-1] == points[-1]
    assert thin(points[:5]) == points[:5]


# --------------------------------------------------------------------------- a job's timeline


@dataclass
class Event:
    type: str
    data: dict[str, Any] | None


def test_probe_and_method_events_belong_to_the_stage_in_progress() -> None:
    probe_1, choice_2 = {"ready": False, "message": "m1"}, {"method": "sdft", "reason": "r2"}
    notes = stage_notes(
        [
            Event("status", {"to": "running"}),
            Event("probe", probe_1),
            Event("method", {"method": "sft_retain", "reason": "r1"}),
            Event("gate", {"accepted": True}),
            Event("method", choice_2),
        ]
    )
    assert notes[0].probe == probe_1 and notes[0].choice is not None
    assert notes[1].probe is None and notes[1].choice == choice_2


def row(stage: int, step: int, loss: float, **more: Any) -> dict[str, Any]:
    return {"stage": stage, "skill": f"skill{stage}", "step": step, "loss": loss, **more}


def test_metric_rows_chart_one_line_per_stage_without_missing_or_non_finite_values() -> None:
    charts = {
        chart.metric: chart
        for chart in metric_charts(
            [
                row(0, 1, 2.0, probe_divergence=None, probe_score=0.25, rollout_tokens_mean=7),
                row(0, 2, 1.5, probe_divergence=float("nan")),
                row(1, 1, 0.5),
            ]
        )
    }
    assert list(charts) == ["loss", "probe_divergence", "probe_score", "rollout_tokens_mean"]
    assert [line.label for line in charts["loss"].lines] == ["stage 1 (skill0)", "stage 2 (skill1)"]
    assert [line.label for line in charts["probe_score"].lines] == ["stage 1 (skill0)"]
    assert charts["probe_divergence"].lines == (), "None and NaN are not drawn"
    assert charts["loss"].latest == "0.5"
