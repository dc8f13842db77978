"""Teacher readiness: does the model answer clearly better with the demonstration in context?

SDFT's teacher is the model itself reading a demonstration. If that does not make it answer better,
the student has nothing to distil: the paper finds 3B models too weak and 7B fine
(docs/reference/sdft-algorithm.md §10 item 15, §12 item 10). Before training, the probe takes a
few held-out demonstrations, greedy-decodes the student prompt and the teacher prompt, grades both
answers against the demonstration with the new skill's grader, and measures the demonstration's
per-token NLL with and without the demonstration in context.

Decision rule (`decide_readiness`), with configurable thresholds:
    ready  iff  at least one held-out row could be graded
           and  teacher_rate - student_rate >= min_rate_gain     (default 0.25: 25 points)
           and  student_nll - teacher_nll   >  min_nll_drop      (default 0: the gold answer must
                                                                  get likelier in the teacher context)
When not ready, the message says the teacher is not clearly better and suggests `method: sft` or a
stronger base; a job may still opt to continue.

Everything here is pure (no torch): workers/training/readiness.py does the model work.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from app.evaluation.graders import (
    extract_json,
    first_number,
    parse_react_tool_calls,
    tool_call_reference_from_golden,
)
from app.evaluation.leakage import LeakageReport, default_leakage_phrases, template_leakage
from app.evaluation.results import check_format

READINESS_FORMAT = "teacher-readiness/1"
# Graders whose reference can be read off a demonstration.
PROBE_GRADERS = frozenset({"exact_match", "contains", "numeric", "json_match", "tool_call"})


@dataclass(frozen=True)
class ReadinessThresholds:
    min_rate_gain: float = 0.25  # teacher rate minus student rate, as a fraction of held-out rows
    min_nll_drop: float = 0.0  # student NLL minus teacher NLL, nats per demonstration token

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_rate_gain <= 1.0:
            raise ValueError(f"min_rate_gain must be in 0..1, got {self.min_rate_gain}")
        if not math.isfinite(self.min_nll_drop):
            raise ValueError(f"min_nll_drop must be finite, got {self.min_nll_drop}")


@dataclass(frozen=True)
class ProbeRow:
    """One held-out demonstration: both greedy answers, their scores (0..1) and the demonstration's
    mean NLL per token without (student) and with (teacher) the demonstration in context."""

    row_id: str
    student_output: str
    teacher_output: str
    student_score: float
    teacher_score: float
    student_nll: float
    teacher_nll: float
    demonstration_tokens: int
    teacher_leaked: tuple[str, ...] = ()
    # Share of the student's own samples (temperature 1) graded right; None when none were drawn.
    student_sample_score: float | None = None


def check_probe_grader(grader: str) -> None:
    """Raise ValueError when a grader cannot take a demonstration as its reference."""
    if grader == "regex":
        raise ValueError(
            "the regex grader's references are patterns and a demonstration is not one; "
            f"probe with one of {', '.join(sorted(PROBE_GRADERS))}"
        )
    if grader == "choice":
        raise ValueError("the choice grader scores given options, and a demonstration has none")
    if grader not in PROBE_GRADERS:
        raise ValueError(f"unknown grader {grader!r} (the probe takes {', '.join(sorted(PROBE_GRADERS))})")


# Words that carry no answer: they neither make a span nor break the question's words out of one.
_FILLER_WORDS = frozenset(
    {
        "a",
        "an",
        "the",
        "of",
        "in",
        "on",
        "at",
        "to",
        "by",
        "for",
        "and",
        "or",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "it",
        "its",
        "as",
        "with",
        "from",
        "this",
        "that",
    }
)
_EDGE_PUNCTUATION = ".,;:!?\"'()[]"


def _word(token: str) -> str:
    return token.strip(_EDGE_PUNCTUATION).casefold()


def answer_span(answer_line: str, question: str) -> str:
    """The part of an answer line that answers: its longest run of words that are neither in the
    question nor filler (the last such run on a tie); the whole line when every word is one of those.

    "Zorvex Dynamics was founded by Mirela Kastov." to "Who founded the company Zorvex Dynamics?" gives
    "Mirela Kastov", so a teacher that answers "Mirela Kastov founded it" is right; "#### 108" to
    "Compute 26 + 82." stays "#### 108".
    """
    asked = {_word(token) for token in question.split()}
    runs: list[list[str]] = [[]]
    for token in answer_line.split():
        word = _word(token)
        if word and word not in asked and word not in _FILLER_WORDS:
            runs[-1].append(token.strip(_EDGE_PUNCTUATION) or token)
        elif runs[-1]:
            runs.append([])
    best = max((run for run in runs if run), key=len, default=None)
    if best is None:
        return answer_line
    longest = [run for run in runs if len(run) == len(best)][-1]
    return " ".join(longest)


def probe_reference(grader: str, demonstration: str, question: str = "") -> str:
    """The reference an answer is graded against: the demonstration as that grader reads it.

    exact_match: the text; contains: the answering span (`answer_span`) of its last non-empty line
    (the answer line of a worked demonstration such as "17 + 25 = 42\n#### 42"); numeric: its first
    number; json_match: its JSON value; tool_call: its Action / Action Input lines as golden actions.
    ValueError when it has none.
    """
    check_probe_grader(grader)
    text = demonstration.strip()
    if not text:
        raise ValueError("the demonstration is empty")
    if grader == "numeric":
        number = first_number(text)
        if number is None or not math.isfinite(number):
            raise ValueError("the demonstration has no (finite) number for the numeric grader")
        return repr(number)
    if grader == "json_match":
        found, value = extract_json(text)
        if not found:
            raise ValueError("the demonstration holds no JSON value for the json_match grader")
        return json.dumps(value, sort_keys=True, ensure_ascii=False)
    if grader == "tool_call":
        parsed = parse_react_tool_calls(text)
        if not parsed.valid or not parsed.actions:
            raise ValueError("the demonstration has no well-formed Action / Action Input lines")
        golden = [
            {"action": action.name, "action_input": dict(action.arguments)} for action in parsed.actions
        ]
        return tool_call_reference_from_golden(golden)
    if grader == "contains":
        # The whole worked answer verbatim judged right answers wrong (a teacher that answered
        # "Mirela Kastov founded it" to "Zorvex Dynamics was founded by Mirela Kastov."): grade the span
        # of the answer line that answers the question.
        answer_line = [line.strip() for line in text.splitlines() if line.strip()][-1]
        return answer_span(answer_line, question)
    return text


def pick_holdout(row_ids: Sequence[str], k: int, seed: int) -> list[int]:
    """Indices of up to k rows, ranked by sha256(seed, row id): the same rows for the same data and
    seed, whatever the row order; a different seed gives an independent pick."""
    if k < 0:
        raise ValueError(f"holdout must be >= 0, got {k}")

    def rank(index: int) -> tuple[str, int]:
        return hashlib.sha256(f"{seed}\0{row_ids[index]}".encode()).hexdigest(), index

    return sorted(range(len(row_ids)), key=rank)[:k]


def _percent(rate: float) -> str:
    return f"{rate * 100:.0f}%"


def decide_readiness(
    *,
    n: int,
    student_rate: float,
    teacher_rate: float,
    student_nll: float | None,
    teacher_nll: float | None,
    thresholds: ReadinessThresholds,
) -> tuple[bool, str]:
    """(ready, message) by the rule in the module docstring."""
    advice = (
        "SDFT can only distil what the demonstration-conditioned teacher does better, so use "
        "`method: sft` or a stronger base model (the paper finds 3B models too weak, 7B fine), "
        "or opt to continue anyway."
    )
    if n == 0 or student_nll is None or teacher_nll is None:
        return False, f"The teacher could not be probed: no held-out demonstration could be graded. {advice}"
    gain = teacher_rate - student_rate
    drop = student_nll - teacher_nll
    measured = (
        f"on {n} held-out demonstration(s) the teacher (demonstration in context) scored "
        f"{_percent(teacher_rate)} against the student's {_percent(student_rate)} "
        f"({gain * 100:+.0f} points), and the demonstration's NLL per token went from "
        f"{student_nll:.3f} to {teacher_nll:.3f} (drop {drop:+.3f})"
    )
    failed = []
    if gain < thresholds.min_rate_gain:
        failed.append(f"a gain of at least {thresholds.min_rate_gain * 100:.0f} points is needed")
    if not drop > thresholds.min_nll_drop:
        failed.append(f"an NLL drop above {thresholds.min_nll_drop:g} is needed")
    if failed:
        return (
            False,
            f"The teacher is not clearly better than the student: {measured}; {'; '.join(failed)}. {advice}",
        )
    return True, f"The teacher is clearly better than the student: {measured}."


def build_readiness_report(
    rows: Sequence[ProbeRow],
    *,
    grader: str,
    thresholds: ReadinessThresholds | None = None,
    leakage_phrases: Sequence[str] | None = None,
    unusable: int = 0,
    unusable_examples: Sequence[str] = (),
    engine: str = "transformers",
) -> ReadinessReport:
    """Rates, token-weighted NLLs, teacher leakage and the decision from per-row probe results.

    leakage_phrases defaults to `default_leakage_phrases()` (the paper template's)."""
    thresholds = thresholds or ReadinessThresholds()
    phrases = default_leakage_phrases() if leakage_phrases is None else tuple(leakage_phrases)
    n = len(rows)
    student_rate = sum(row.student_score for row in rows) / n if n else 0.0
    teacher_rate = sum(row.teacher_score for row in rows) / n if n else 0.0
    tokens = sum(row.demonstration_tokens for row in rows)
    # Weighted by tokens: the mean NLL per demonstration token over the whole held-out slice.
    student_nll = sum(row.student_nll * row.demonstration_tokens for row in rows) / tokens if tokens else None
    teacher_nll = sum(row.teacher_nll * row.demonstration_tokens for row in rows) / tokens if tokens else None
    leakage = template_leakage([row.teacher_output for row in rows], phrases)
    measured: dict[str, Any] = {
        "n": n,
        "student_rate": student_rate,
        "teacher_rate": teacher_rate,
        "student_nll": student_nll,
        "teacher_nll": teacher_nll,
    }
    ready, message = decide_readiness(**measured, thresholds=thresholds)
    warning = leakage.warning("teacher answers")
    if warning:
        message += f" Note: {warning}; the student learns to imitate this wording."
    return ReadinessReport(
        ready=ready,
        message=message,
        grader=grader,
        **measured,
        thresholds=thresholds,
        teacher_leakage=leakage,
        rows=tuple(rows),
        unusable=unusable,
        unusable_examples=tuple(unusable_examples),
        leakage_phrases=phrases,
        engine=engine,
    )


@dataclass(frozen=True)
class ReadinessReport:
    ready: bool
    message: str
    grader: str
    n: int
    student_rate: float
    teacher_rate: float
    student_nll: float | None
    teacher_nll: float | None
    thresholds: ReadinessThresholds
    teacher_leakage: LeakageReport
    rows: tuple[ProbeRow, ...]
    unusable: int = 0  # rows whose demonstration gave no reference or whose prompts did not fit
    unusable_examples: tuple[str, ...] = ()
    leakage_phrases: tuple[str, ...] = ()
    engine: str = "transformers"  # what generated the answers and samples ("none": no row was probed)

    @property
    def student_sample_rate(self) -> float | None:
        """Share of the student's own samples graded right over every probed row (None if none drawn)."""
        scores = [row.student_sample_score for row in self.rows if row.student_sample_score is not None]
        return sum(scores) / len(scores) if scores else None

    @property
    def rate_gain(self) -> float:
        return self.teacher_rate - self.student_rate

    @property
    def nll_drop(self) -> float | None:
        if self.student_nll is None or self.teacher_nll is None:
            return None
        return self.student_nll - self.teacher_nll

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": READINESS_FORMAT,
            "ready": self.ready,
            "message": self.message,
            "grader": self.grader,
            "n": self.n,
            "student_rate": self.student_rate,
            "teacher_rate": self.teacher_rate,
            "student_nll": self.student_nll,
            "teacher_nll": self.teacher_nll,
            "rate_gain": self.rate_gain,
            "nll_drop": self.nll_drop,
            "student_sample_rate": self.student_sample_rate,
            "thresholds": asdict(self.thresholds),
            "teacher_leakage": self.teacher_leakage.to_dict(),
            "rows": [{**asdict(row), "teacher_leaked": list(row.teacher_leaked)} for row in self.rows],
            "unusable": self.unusable,
            "unusable_examples": list(self.unusable_examples),
            "leakage_phrases": list(self.leakage_phrases),
            "engine": self.engine,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReadinessReport:
        """Inverse of to_dict (derived fields rate_gain, nll_drop and student_sample_rate are recomputed)."""
        check_format(data, READINESS_FORMAT)
        try:
            rows = tuple(
                ProbeRow(**{**row, "teacher_leaked": tuple(row.get("teacher_leaked", ()))})
                for row in data["rows"]
            )
            return cls(
                ready=bool(data["ready"]),
                message=str(data["message"]),
                grader=str(data["grader"]),
                n=int(data["n"]),
                student_rate=float(data["student_rate"]),
                teacher_rate=float(data["teacher_rate"]),
                student_nll=None if data["student_nll"] is None else float(data["student_nll"]),
                teacher_nll=None if data["teacher_nll"] is None else float(data["teacher_nll"]),
                thresholds=ReadinessThresholds(**data["thresholds"]),
                teacher_leakage=LeakageReport.from_dict(data["teacher_leakage"]),
                rows=rows,
                unusable=int(data.get("unusable", 0)),
                unusable_examples=tuple(data.get("unusable_examples", ())),
                leakage_phrases=tuple(data.get("leakage_phrases", ())),
                engine=str(data.get("engine", "transformers")),
            )
        except (KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"malformed readiness report: {error!r}") from error


# `auto` trains SDFT only if the student's own samples reach the answer at least this often: SDFT's
# per-token signal lives on the states the student visits, and at 135M, where the demonstration-
# conditioned teacher answered 75% of held-out facts but the student sampled none, SDFT learned
# nothing in 80 steps while SFT learned 42.5% (docs/experiments/README.md).
MIN_STUDENT_SAMPLE_RATE = 0.1


@dataclass(frozen=True)
class MethodChoice:
    method: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def choose_method(
    report: ReadinessReport, fallback: str, min_sample_rate: float = MIN_STUDENT_SAMPLE_RATE
) -> MethodChoice:
    """`method: auto`: SDFT when the demonstration-conditioned teacher is clearly better than the
    student (the readiness rule) and the student's own samples reach the answer at least
    `min_sample_rate` of the time; otherwise `fallback` (a method that learns off-policy)."""
    sample_rate = report.student_sample_rate
    sampled = "not measured" if sample_rate is None else _percent(sample_rate)
    if not report.ready:
        return MethodChoice(
            fallback,
            f"{fallback}: the demonstration-conditioned teacher is not clearly better than the student "
            f"(teacher {_percent(report.teacher_rate)}, student {_percent(report.student_rate)} on "
            f"{report.n} held-out demonstration(s)), so self-distillation has nothing to teach.",
        )
    if sample_rate is None or sample_rate < min_sample_rate:
        return MethodChoice(
            fallback,
            f"{fallback}: the teacher is clearly better (teacher {_percent(report.teacher_rate)}, student "
            f"{_percent(report.student_rate)}), but the student's own samples reach the answer {sampled} "
            f"of the time (at least {_percent(min_sample_rate)} is needed): its on-policy rollouts "
            "rarely visit the states where the teacher knows better, so SDFT's signal is too sparse here.",
        )
    return MethodChoice(
        "sdft",
        f"sdft: the teacher is clearly better (teacher {_percent(report.teacher_rate)}, student "
        f"{_percent(report.student_rate)}) and the student's own samples reach the answer {sampled} of the "
        "time, so there is an on-policy signal to distil.",
    )
