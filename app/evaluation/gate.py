"""The promotion gate: accept a candidate only if every earlier skill holds and the new skill improved.

Policy (see service-anchors §c, "paired non-inferiority"), all in points (0..100):
- prior suite (earlier skills, general suites): pass iff the paired-bootstrap lower bound of
  (candidate − parent) ≥ −tolerance AND the point delta ≥ −tolerance;
- new-skill suite: pass iff it holds as a prior suite does (it may be an earlier skill's suite listed
  again, and is never allowed to drop) AND (min_score is None or candidate mean ≥ min_score) AND
  (improvement not required, or the paired lower bound of the gain > 0);
- the candidate is accepted iff there is at least one suite and every suite passes.

Failures never help the candidate: an item that failed to evaluate on the candidate scores 0 for
the candidate; one that failed on the parent scores 1 (the best possible) for the parent, so that
pair can only show a loss or a tie. Item sets that differ between the two runs reject the suite:
the comparison is not like-for-like.

Pure and reproducible: the same inputs give the same report, and `conditions_sha256` names the
inputs that fix the verdict's conditions (suites, decoding, seeds, checkpoints, policy).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from app.evaluation.stats import derive_seed, paired_bootstrap_delta_ci, to_points

GATE_POLICY = "paired-bootstrap-noninferiority/2"  # 2: new-skill suites must hold too
Role = Literal["prior", "new_skill"]
ROLES: tuple[Role, ...] = ("prior", "new_skill")
# Scores substituted for items that failed to evaluate (0..1 scale): always against the candidate.
CANDIDATE_FAILURE_SCORE = 0.0
PARENT_FAILURE_SCORE = 1.0

if TYPE_CHECKING:
    from app.evaluation.suites import EvalSuite


def _check_results(name: str, results: Mapping[str, float | None]) -> None:
    for item_id, score in results.items():
        if score is None:
            continue
        if isinstance(score, bool) or not isinstance(score, int | float) or not 0.0 <= score <= 1.0:
            raise ValueError(f"{name}[{item_id!r}] must be a score in 0..1 or None, got {score!r}")


@dataclass(frozen=True)
class SuiteComparison:
    """Per-item results of the parent and the candidate on one suite (scores 0..1, None = failed)."""

    suite_name: str
    suite_sha256: str
    role: Role
    tolerance: float
    min_score: float | None
    decoding: Mapping[str, Any]
    parent_results: Mapping[str, float | None]
    candidate_results: Mapping[str, float | None]

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {self.role!r}")
        if not math.isfinite(self.tolerance) or self.tolerance < 0:
            raise ValueError(f"tolerance must be a finite number >= 0, got {self.tolerance}")
        if self.min_score is not None and not 0.0 <= self.min_score <= 100.0:
            raise ValueError(f"min_score must be in 0..100 points, got {self.min_score}")
        _check_results("parent_results", self.parent_results)
        _check_results("candidate_results", self.candidate_results)

    @classmethod
    def for_suite(
        cls,
        suite: EvalSuite,
        role: Role,
        parent_results: Mapping[str, float | None],
        candidate_results: Mapping[str, float | None],
    ) -> SuiteComparison:
        """Take name, sha, tolerance, min_score and decoding from a parsed suite."""
        return cls(
            suite_name=suite.meta.name,
            suite_sha256=suite.sha256,
            role=role,
            tolerance=suite.meta.tolerance,
            min_score=suite.meta.min_score,
            decoding=suite.meta.decoding.model_dump(mode="json"),
            parent_results=parent_results,
            candidate_results=candidate_results,
        )


@dataclass(frozen=True)
class GateOptions:
    seed: int = 0
    resamples: int = 2000
    confidence: float = 0.95
    require_improvement: bool = True

    def __post_init__(self) -> None:
        if self.resamples < 1:
            raise ValueError(f"resamples must be >= 1, got {self.resamples}")
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"confidence must be strictly between 0 and 1, got {self.confidence}")


@dataclass(frozen=True)
class GateRow:
    """One suite's verdict. Scores, delta and interval are points (0..100); None when not computable.

    improved / regressed count items where the candidate scored higher / lower than the parent
    (the discordant pairs a McNemar test would use).
    """

    suite: str
    suite_sha256: str
    role: Role
    n: int
    parent_score: float | None
    candidate_score: float | None
    delta: float | None
    ci_low: float | None
    ci_high: float | None
    tolerance: float
    min_score: float | None
    passed: bool
    reason: str
    improved: int = 0
    regressed: int = 0
    parent_failures: int = 0
    candidate_failures: int = 0


@dataclass(frozen=True)
class GateReport:
    accepted: bool
    reason: str
    rows: tuple[GateRow, ...]
    conditions_sha256: str
    parent_checkpoint_sha256: str
    candidate_checkpoint_sha256: str
    options: GateOptions = field(default_factory=GateOptions)
    policy: str = GATE_POLICY

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serializable dict (rows as a list of dicts)."""
        report = asdict(self)
        report["rows"] = [asdict(row) for row in self.rows]
        return report

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, allow_nan=False)

    def render_table(self) -> str:
        """Fixed-width text table for the CLI, then the verdict and one reason line per suite."""
        percent = f"{self.options.confidence * 100:g}% CI"
        headers = ("suite", "role", "n", "parent", "cand", "delta", percent, "tol", "min", "result")
        body = [
            (
                row.suite,
                row.role,
                str(row.n),
                _cell(row.parent_score),
                _cell(row.candidate_score),
                _cell(row.delta, signed=True),
                "-"
                if row.ci_low is None or row.ci_high is None
                else f"[{row.ci_low:+.2f}, {row.ci_high:+.2f}]",
                f"{row.tolerance:.2f}",
                _cell(row.min_score),
                "PASS" if row.passed else "FAIL",
            )
            for row in self.rows
        ]
        widths = [max(len(text) for text in column) for column in zip(headers, *body, strict=True)]
        numeric = {2, 3, 4, 5, 7, 8}  # right-align numbers so decimals line up

        def line(cells: Sequence[str]) -> str:
            parts = [
                cell.rjust(width) if index in numeric else cell.ljust(width)
                for index, (cell, width) in enumerate(zip(cells, widths, strict=True))
            ]
            return "  ".join(parts).rstrip()

        lines = [line(headers), line(["-" * width for width in widths])]
        lines.extend(line(cells) for cells in body)
        lines.append("")
        lines.append(f"verdict: {'ACCEPTED' if self.accepted else 'REJECTED'} - {self.reason}")
        lines.extend(f"  {row.suite}: {row.reason}" for row in self.rows)
        lines.append(f"conditions: {self.conditions_sha256}")
        return "\n".join(lines)


def _cell(value: float | None, *, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def _canonical_sha256(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def gate_conditions(
    comparisons: Sequence[SuiteComparison],
    *,
    parent_checkpoint_sha256: str,
    candidate_checkpoint_sha256: str,
    options: GateOptions,
) -> dict[str, Any]:
    """Everything besides the per-item results that decides a verdict (suites sorted by name)."""
    suites = [
        {
            "name": comparison.suite_name,
            "sha256": comparison.suite_sha256,
            "role": comparison.role,
            "decoding": dict(comparison.decoding),
            "tolerance": comparison.tolerance,
            "min_score": comparison.min_score,
        }
        for comparison in sorted(comparisons, key=lambda comparison: comparison.suite_name)
    ]
    return {
        "policy": GATE_POLICY,
        "suites": suites,
        "seed": options.seed,
        "resamples": options.resamples,
        "confidence": options.confidence,
        "require_improvement": options.require_improvement,
        "parent_checkpoint_sha256": parent_checkpoint_sha256,
        "candidate_checkpoint_sha256": candidate_checkpoint_sha256,
    }


def _sample(ids: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(repr(item_id) for item_id in ids[:limit])
    return shown + (", ..." if len(ids) > limit else "")


def _failure_notes(parent_failures: int, candidate_failures: int, failed_on_both: Sequence[str]) -> str:
    notes = []
    if failed_on_both:
        # Deliberately still a loss (a failure never helps the candidate), but named: the same item
        # failing on both models points at the suite, and it will fail every later candidate too.
        notes.append(
            f"{len(failed_on_both)} item(s) failed to evaluate on both models ({_sample(failed_on_both)}), "
            "which points at the suite itself (a prompt longer than the context, a pattern that times "
            "out): fix or remove them, or every candidate on this lineage fails this suite"
        )
    if candidate_failures:
        notes.append(f"{candidate_failures} candidate item(s) failed to evaluate and count as 0")
    if parent_failures:
        notes.append(
            f"{parent_failures} parent item(s) failed to evaluate and count as 100 for the parent, "
            "so they cannot help the candidate"
        )
    return "" if not notes else " Note: " + "; ".join(notes) + "."


def _judge_suite(comparison: SuiteComparison, options: GateOptions) -> GateRow:
    def rejected(n: int, reason: str) -> GateRow:
        return GateRow(
            suite=comparison.suite_name,
            suite_sha256=comparison.suite_sha256,
            role=comparison.role,
            n=n,
            parent_score=None,
            candidate_score=None,
            delta=None,
            ci_low=None,
            ci_high=None,
            tolerance=comparison.tolerance,
            min_score=comparison.min_score,
            passed=False,
            reason=reason,
        )

    parent_ids, candidate_ids = set(comparison.parent_results), set(comparison.candidate_results)
    if parent_ids != candidate_ids:
        only_parent = sorted(parent_ids - candidate_ids)
        only_candidate = sorted(candidate_ids - parent_ids)
        return rejected(
            len(parent_ids | candidate_ids),
            f"Failed: item sets differ ({len(only_parent)} only in the parent run"
            + (f": {_sample(only_parent)}" if only_parent else "")
            + f"; {len(only_candidate)} only in the candidate run"
            + (f": {_sample(only_candidate)}" if only_candidate else "")
            + "), so the runs are not comparable.",
        )
    if not parent_ids:
        return rejected(0, "Failed: the suite has no evaluated items.")

    # Sorted ids make the pairing (and so the bootstrap draw) independent of mapping order.
    item_ids = sorted(parent_ids)
    parent_raw = [comparison.parent_results[item_id] for item_id in item_ids]
    candidate_raw = [comparison.candidate_results[item_id] for item_id in item_ids]
    parent_points = to_points([PARENT_FAILURE_SCORE if s is None else float(s) for s in parent_raw])
    candidate_points = to_points([CANDIDATE_FAILURE_SCORE if s is None else float(s) for s in candidate_raw])
    parent_failures = sum(score is None for score in parent_raw)
    candidate_failures = sum(score is None for score in candidate_raw)
    failed_on_both = [
        item_id
        for item_id, parent, candidate in zip(item_ids, parent_raw, candidate_raw, strict=True)
        if parent is None and candidate is None
    ]

    delta, low, high = paired_bootstrap_delta_ci(
        parent_points,
        candidate_points,
        seed=derive_seed(options.seed, comparison.suite_sha256),
        resamples=options.resamples,
        confidence=options.confidence,
    )
    parent_mean = sum(parent_points) / len(parent_points)
    candidate_mean = sum(candidate_points) / len(candidate_points)
    level = f"{options.confidence * 100:g}%"
    summary = (
        f"candidate {candidate_mean:.2f} vs parent {parent_mean:.2f} "
        f"(delta {delta:+.2f}, {level} CI [{low:+.2f}, {high:+.2f}], n={len(item_ids)})"
    )

    tolerance = comparison.tolerance
    failures: list[str] = []
    # Every suite must hold, the new skill's too: a stage may list an earlier skill's suite as its own.
    if delta < -tolerance:
        failures.append(
            f"the score dropped {-delta:.2f} points, more than the {tolerance:.2f}-point tolerance"
        )
    if low < -tolerance:
        failures.append(
            f"the drop could be as large as {-low:.2f} points ({level} lower bound), "
            f"beyond the {tolerance:.2f}-point tolerance"
        )
    held = f"held within the {tolerance:.2f}-point tolerance, lower bound {low:+.2f} >= {-tolerance:+.2f}"
    if comparison.role == "prior":
        verdict = held
    else:
        min_score = comparison.min_score
        if min_score is not None and candidate_mean < min_score:
            failures.append(
                f"the candidate's {candidate_mean:.2f} is below the minimum score {min_score:.2f}"
            )
        if options.require_improvement and not low > 0:
            failures.append(
                f"no demonstrated improvement: the {level} lower bound of the gain is {low:+.2f}, not above 0"
            )
        checks = []
        if options.require_improvement:  # a gain shown above 0 has held as well
            checks.append(f"improved, lower bound {low:+.2f} > 0")
        else:
            checks += [held, "improvement not required"]
        if min_score is not None:
            checks.append(f"meets the minimum score {min_score:.2f}")
        verdict = "; ".join(checks)

    passed = not failures
    reason = (
        f"Passed: {summary}; {verdict}." if passed else f"Failed: {summary}; " + "; and ".join(failures) + "."
    ) + _failure_notes(parent_failures, candidate_failures, failed_on_both)
    return GateRow(
        suite=comparison.suite_name,
        suite_sha256=comparison.suite_sha256,
        role=comparison.role,
        n=len(item_ids),
        parent_score=parent_mean,
        candidate_score=candidate_mean,
        delta=delta,
        ci_low=low,
        ci_high=high,
        tolerance=tolerance,
        min_score=comparison.min_score,
        passed=passed,
        reason=reason,
        improved=sum(c > p for c, p in zip(candidate_points, parent_points, strict=True)),
        regressed=sum(c < p for c, p in zip(candidate_points, parent_points, strict=True)),
        parent_failures=parent_failures,
        candidate_failures=candidate_failures,
    )


def evaluate_gate(
    comparisons: Sequence[SuiteComparison],
    *,
    parent_checkpoint_sha256: str,
    candidate_checkpoint_sha256: str,
    options: GateOptions | None = None,
) -> GateReport:
    """Judge every suite and accept the candidate only if all pass (see the module docstring).

    Each suite's bootstrap seed is derived from (options.seed, suite sha), so suites are
    independent yet reproducible. Duplicate suite names raise ValueError.
    """
    options = options or GateOptions()
    names = [comparison.suite_name for comparison in comparisons]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"each suite may appear once; duplicated: {', '.join(duplicates)}")
    conditions_sha256 = _canonical_sha256(
        gate_conditions(
            comparisons,
            parent_checkpoint_sha256=parent_checkpoint_sha256,
            candidate_checkpoint_sha256=candidate_checkpoint_sha256,
            options=options,
        )
    )
    rows = tuple(_judge_suite(comparison, options) for comparison in comparisons)
    failed = [row.suite for row in rows if not row.passed]
    if not rows:
        reason = "no suites are attached to the lineage, so nothing shows that earlier skills still hold."
    elif failed:
        reason = f"{len(failed)} of {len(rows)} suite(s) failed: {', '.join(failed)}."
    else:
        reason = f"all {len(rows)} suite(s) passed."
    return GateReport(
        accepted=bool(rows) and not failed,
        reason=reason,
        rows=rows,
        conditions_sha256=conditions_sha256,
        parent_checkpoint_sha256=parent_checkpoint_sha256,
        candidate_checkpoint_sha256=candidate_checkpoint_sha256,
        options=options,
    )
