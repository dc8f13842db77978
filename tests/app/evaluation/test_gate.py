"""The promotion gate: each rule, ties, tiny suites, pairing, failures, item sets, conditions hash."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import pytest

from app.evaluation.gate import GateOptions, GateReport, SuiteComparison, evaluate_gate
from app.evaluation.suites import SuiteMeta, parse_suite_jsonl

PARENT_SHA = "a" * 64
CANDIDATE_SHA = "b" * 64
DECODING: Mapping[str, Any] = {"greedy": True, "max_new_tokens": 256, "temperature": 0.0}


def results(scores: Sequence[float | None], prefix: str = "item") -> dict[str, float | None]:
    return {f"{prefix}-{index:03d}": score for index, score in enumerate(scores)}


def comparison(
    parent: Sequence[float | None],
    candidate: Sequence[float | None],
    *,
    name: str = "suite",
    role: str = "prior",
    tolerance: float = 2.0,
    min_score: float | None = None,
    sha: str | None = None,
) -> SuiteComparison:
    return SuiteComparison(
        suite_name=name,
        suite_sha256=sha or f"sha-of-{name}",
        role=role,  # type: ignore[arg-type]
        tolerance=tolerance,
        min_score=min_score,
        decoding=DECODING,
        parent_results=results(parent),
        candidate_results=results(candidate),
    )


def judge(*comparisons: SuiteComparison, **options: Any) -> GateReport:
    return evaluate_gate(
        comparisons,
        parent_checkpoint_sha256=PARENT_SHA,
        candidate_checkpoint_sha256=CANDIDATE_SHA,
        options=GateOptions(**options),
    )


def ones_then_zeros(ones: int, total: int) -> list[float | None]:
    return [1.0 if index < ones else 0.0 for index in range(total)]


# --------------------------------------------------------------------------- prior suites


def test_prior_suite_holds_within_tolerance() -> None:
    parent = ones_then_zeros(60, 200)
    candidate = list(parent)
    candidate[0] = 0.0  # one item lost of 200: -0.5 points
    report = judge(comparison(parent, candidate, tolerance=5.0))
    row = report.rows[0]
    assert report.accepted and row.passed
    assert row.n == 200
    assert row.parent_score == pytest.approx(30.0)
    assert row.candidate_score == pytest.approx(29.5)
    assert row.delta == pytest.approx(-0.5)
    assert row.ci_low is not None and row.ci_high is not None and row.delta is not None
    assert -5.0 <= row.ci_low <= row.delta <= row.ci_high
    assert (row.improved, row.regressed) == (0, 1)
    assert row.reason.startswith("Passed:")


def test_prior_suite_fails_when_point_delta_exceeds_tolerance() -> None:
    parent = ones_then_zeros(80, 100)
    candidate = ones_then_zeros(70, 100)
    row = judge(comparison(parent, candidate, tolerance=2.0)).rows[0]
    assert not row.passed
    assert row.delta == pytest.approx(-10.0)
    assert "dropped 10.00 points" in row.reason


def test_prior_suite_fails_on_lower_bound_even_if_point_delta_is_within_tolerance() -> None:
    parent = ones_then_zeros(10, 20)
    candidate = list(parent)
    candidate[0] = 0.0  # delta -5 points with tolerance 6, but 20 items leave a wide interval
    row = judge(comparison(parent, candidate, tolerance=6.0)).rows[0]
    assert row.delta == pytest.approx(-5.0)
    assert row.ci_low is not None and row.ci_low < -6.0
    assert not row.passed
    assert "lower bound" in row.reason and "dropped" not in row.reason


def test_prior_suite_with_zero_tolerance_passes_only_exact_ties_or_gains() -> None:
    parent = ones_then_zeros(5, 10)
    assert judge(comparison(parent, parent, tolerance=0.0)).accepted
    better = ones_then_zeros(6, 10)
    assert judge(comparison(parent, better, tolerance=0.0)).rows[0].delta == pytest.approx(10.0)


# --------------------------------------------------------------------------- new-skill suites


def test_new_skill_passes_with_clear_improvement_and_floor() -> None:
    parent = ones_then_zeros(30, 100)
    candidate = ones_then_zeros(60, 100)
    row = judge(comparison(parent, candidate, role="new_skill", min_score=50.0)).rows[0]
    assert row.passed
    assert row.ci_low is not None and row.ci_low > 0
    assert "improved" in row.reason and "minimum score 50.00" in row.reason


def test_new_skill_fails_below_min_score_despite_improvement() -> None:
    parent = ones_then_zeros(10, 100)
    candidate = ones_then_zeros(40, 100)
    row = judge(comparison(parent, candidate, role="new_skill", min_score=50.0)).rows[0]
    assert not row.passed
    assert "below the minimum score" in row.reason
    assert "no demonstrated improvement" not in row.reason


def test_ties_prior_passes_new_skill_fails_when_improvement_required() -> None:
    scores = ones_then_zeros(7, 20)
    report = judge(
        comparison(scores, scores, name="old", role="prior"),
        comparison(scores, scores, name="new", role="new_skill"),
    )
    old, new = report.rows
    assert (old.delta, old.ci_low, old.ci_high) == (0.0, 0.0, 0.0)
    assert old.passed
    assert (new.delta, new.ci_low) == (0.0, 0.0)
    assert not new.passed and "no demonstrated improvement" in new.reason
    assert not report.accepted
    assert "1 of 2 suite(s) failed: new" in report.reason


def test_tie_on_new_skill_passes_when_improvement_not_required() -> None:
    scores = ones_then_zeros(7, 20)
    report = judge(comparison(scores, scores, role="new_skill"), require_improvement=False)
    assert report.accepted
    assert "improvement not required" in report.rows[0].reason


def test_a_new_skill_suite_that_drops_fails_even_when_improvement_is_not_required() -> None:
    # A stage may list an earlier skill's suite as its own: judged as new, it must still hold.
    report = judge(
        comparison(ones_then_zeros(20, 20), ones_then_zeros(0, 20), role="new_skill"),
        require_improvement=False,
    )
    assert not report.accepted
    assert "the score dropped 100.00 points" in report.rows[0].reason
    held = judge(comparison(ones_then_zeros(7, 20), ones_then_zeros(7, 20), role="new_skill"),
                 require_improvement=False)  # fmt: skip
    assert held.accepted and "held within" in held.rows[0].reason


def test_mean_improves_but_paired_items_do_not_show_a_gain() -> None:
    # Unpaired, the candidate looks better (50 vs 40 points), but it lost 4 items the parent had
    # and won 5 others: the paired interval straddles 0, so the new skill is not shown to improve.
    parent = [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    candidate = [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]
    row = judge(comparison(parent, candidate, role="new_skill")).rows[0]
    assert row.candidate_score is not None and row.parent_score is not None
    assert row.candidate_score > row.parent_score
    assert row.delta == pytest.approx(10.0)
    assert (row.improved, row.regressed) == (5, 4)
    assert row.ci_low is not None and row.ci_low <= 0
    assert not row.passed


def test_all_suites_must_pass() -> None:
    report = judge(
        comparison(ones_then_zeros(50, 100), ones_then_zeros(40, 100), name="old"),
        comparison(ones_then_zeros(20, 100), ones_then_zeros(70, 100), name="new", role="new_skill"),
    )
    assert [row.passed for row in report.rows] == [False, True]
    assert not report.accepted


# --------------------------------------------------------------------------- tiny suites


def test_single_item_suites() -> None:
    assert judge(comparison([1.0], [1.0])).accepted  # tie on a prior suite
    lost = judge(comparison([1.0], [0.0])).rows[0]
    assert not lost.passed and lost.delta == -100.0
    # One item gives a zero-width interval: a single win counts as demonstrated improvement.
    won = judge(comparison([0.0], [1.0], role="new_skill")).rows[0]
    assert won.passed and (won.ci_low, won.ci_high) == (100.0, 100.0)


def test_two_item_suites() -> None:
    mixed = judge(comparison([0.0, 0.0], [1.0, 0.0], role="new_skill")).rows[0]
    assert mixed.delta == 50.0 and mixed.ci_low == 0.0  # a resample of the unchanged item alone
    assert not mixed.passed
    both = judge(comparison([0.0, 0.0], [1.0, 1.0], role="new_skill")).rows[0]
    assert both.passed
    one_lost = judge(comparison([1.0, 1.0], [1.0, 0.0], tolerance=2.0)).rows[0]
    assert not one_lost.passed


# --------------------------------------------------------------------------- failures and item sets


def test_candidate_failures_count_against_it() -> None:
    parent = [1.0] * 100
    candidate: list[float | None] = [1.0] * 95 + [None] * 5
    row = judge(comparison(parent, candidate, tolerance=2.0)).rows[0]
    assert row.candidate_failures == 5 and row.parent_failures == 0
    assert row.candidate_score == pytest.approx(95.0)
    assert not row.passed
    assert "5 candidate item(s) failed to evaluate and count as 0" in row.reason


def test_parent_failures_never_help_the_candidate() -> None:
    # The parent failed everywhere; the candidate answered everything. Scoring parent failures as
    # the best value turns every pair into a tie, so no improvement can be claimed from them.
    parent: list[float | None] = [None] * 30
    candidate = [1.0] * 30
    row = judge(comparison(parent, candidate, role="new_skill")).rows[0]
    assert row.parent_failures == 30
    assert row.delta == 0.0
    assert not row.passed
    # A failure on both sides is a loss for the candidate.
    both = judge(comparison([None, 1.0], [None, 1.0], tolerance=2.0)).rows[0]
    assert both.delta == pytest.approx(-50.0) and not both.passed
    # ... and named as the suite's own problem, since it will fail every later candidate too.
    assert "1 item(s) failed to evaluate on both models" in both.reason
    assert "points at the suite itself" in both.reason


def test_item_set_mismatch_rejects() -> None:
    mismatched = SuiteComparison(
        suite_name="s",
        suite_sha256="sha",
        role="prior",
        tolerance=2.0,
        min_score=None,
        decoding=DECODING,
        parent_results={"a": 1.0, "b": 1.0},
        candidate_results={"a": 1.0, "c": 1.0},
    )
    report = judge(mismatched)
    row = report.rows[0]
    assert not report.accepted and not row.passed
    assert "item sets differ" in row.reason
    assert "'b'" in row.reason and "'c'" in row.reason
    assert row.delta is None and row.n == 3


def test_empty_suite_list_and_empty_results_reject() -> None:
    report = judge()
    assert not report.accepted and report.rows == ()
    assert "no suites" in report.reason
    row = judge(comparison([], [])).rows[0]
    assert not row.passed and "no evaluated items" in row.reason


def test_invalid_inputs_raise() -> None:
    with pytest.raises(ValueError, match=r"0\.\.1"):
        comparison([1.5], [1.0])
    with pytest.raises(ValueError, match="role"):
        comparison([1.0], [1.0], role="baseline")
    with pytest.raises(ValueError, match="tolerance"):
        comparison([1.0], [1.0], tolerance=-1.0)
    with pytest.raises(ValueError, match="duplicated"):
        judge(comparison([1.0], [1.0]), comparison([1.0], [1.0]))
    with pytest.raises(ValueError, match="confidence"):
        GateOptions(confidence=1.0)


# --------------------------------------------------------------------------- reproducibility


def two_suites() -> list[SuiteComparison]:
    return [
        comparison(ones_then_zeros(40, 60), ones_then_zeros(39, 60), name="tool-use", tolerance=5.0),
        comparison(ones_then_zeros(10, 60), ones_then_zeros(30, 60), name="science", role="new_skill"),
    ]


def test_same_inputs_same_report_and_conditions_hash() -> None:
    first, second = judge(*two_suites()), judge(*two_suites())
    assert first.to_dict() == second.to_dict()
    assert first.conditions_sha256 == second.conditions_sha256
    assert len(first.conditions_sha256) == 64


def test_suite_order_does_not_change_hash_or_rows() -> None:
    forward = judge(*two_suites())
    backward = judge(*reversed(two_suites()))
    assert forward.conditions_sha256 == backward.conditions_sha256
    assert {row.suite: row for row in forward.rows} == {row.suite: row for row in backward.rows}


def test_item_order_does_not_change_the_verdict() -> None:
    base = two_suites()[0]
    shuffled = replace(
        base,
        parent_results=dict(reversed(list(base.parent_results.items()))),
        candidate_results=dict(reversed(list(base.candidate_results.items()))),
    )
    assert judge(base).rows == judge(shuffled).rows


def test_conditions_hash_changes_with_seed_checkpoints_and_suites() -> None:
    base = judge(*two_suites()).conditions_sha256
    suites = two_suites()
    variants = {
        "seed": judge(*suites, seed=1).conditions_sha256,
        "resamples": judge(*suites, resamples=1000).conditions_sha256,
        "require_improvement": judge(*suites, require_improvement=False).conditions_sha256,
        "parent": evaluate_gate(
            suites, parent_checkpoint_sha256="c" * 64, candidate_checkpoint_sha256=CANDIDATE_SHA
        ).conditions_sha256,
        "candidate": evaluate_gate(
            suites, parent_checkpoint_sha256=PARENT_SHA, candidate_checkpoint_sha256="c" * 64
        ).conditions_sha256,
        "suite sha": judge(replace(suites[0], suite_sha256="other"), suites[1]).conditions_sha256,
        "decoding": judge(
            replace(suites[0], decoding={**DECODING, "max_new_tokens": 512}), suites[1]
        ).conditions_sha256,
        "tolerance": judge(replace(suites[0], tolerance=1.0), suites[1]).conditions_sha256,
    }
    assert base not in variants.values()
    assert len(set(variants.values())) == len(variants)


def test_results_are_not_conditions() -> None:
    suites = two_suites()
    changed = replace(suites[0], candidate_results=results(ones_then_zeros(20, 60)))
    assert judge(changed, suites[1]).conditions_sha256 == judge(*suites).conditions_sha256


def fractional_scores(n: int, offset: float) -> list[float | None]:
    """Partial-credit scores, so bootstrap quantiles do not fall on a few discrete values."""
    return [min(1.0, ((index * 37) % 101) / 100 + offset) for index in range(n)]


def test_seed_changes_intervals_reproducibly() -> None:
    suites = [comparison(fractional_scores(60, 0.0), fractional_scores(60, 0.05), role="new_skill")]
    assert judge(*suites, seed=3).rows == judge(*suites, seed=3).rows
    assert judge(*suites, seed=3).rows[0].ci_low != judge(*suites, seed=4).rows[0].ci_low


def test_per_suite_seeds_come_from_suite_sha() -> None:
    parent, candidate = fractional_scores(60, 0.0), fractional_scores(60, 0.05)
    same_a = judge(comparison(parent, candidate, name="a", sha="s1")).rows[0]
    same_b = judge(comparison(parent, candidate, name="b", sha="s1")).rows[0]
    other = judge(comparison(parent, candidate, name="a", sha="s2")).rows[0]
    assert (same_a.ci_low, same_a.ci_high) == (same_b.ci_low, same_b.ci_high)
    assert (same_a.ci_low, same_a.ci_high) != (other.ci_low, other.ci_high)


# --------------------------------------------------------------------------- output


def test_report_serializes_and_renders() -> None:
    report = judge(*two_suites())
    data = json.loads(report.to_json())
    assert data["accepted"] == report.accepted
    assert [row["suite"] for row in data["rows"]] == ["tool-use", "science"]
    assert data["options"] == {"seed": 0, "resamples": 2000, "confidence": 0.95, "require_improvement": True}
    assert json.loads(json.dumps(report.to_dict())) == data
    table = report.render_table()
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["suite", "role", "n"]
    assert "95% CI" in lines[0]
    assert any(line.startswith("tool-use") and "PASS" in line for line in lines)
    assert "verdict: ACCEPTED" in table
    assert report.conditions_sha256 in table


def test_for_suite_takes_metadata_from_the_suite() -> None:
    meta = SuiteMeta(name="tool-use", grader="tool_call", tolerance=4.0, min_score=10.0)
    reference = json.dumps([{"action": "a", "action_input": "{}"}])
    suite = parse_suite_jsonl(json.dumps({"prompt": "q", "reference": reference, "id": "x"}), meta)
    built = SuiteComparison.for_suite(suite, "prior", {"x": 1.0}, {"x": 1.0})
    assert (built.suite_name, built.suite_sha256, built.tolerance, built.min_score) == (
        "tool-use",
        suite.sha256,
        4.0,
        10.0,
    )
    assert built.decoding == {"greedy": True, "max_new_tokens": 256, "temperature": 0.0}
