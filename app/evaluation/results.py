"""One suite evaluated on one model: every item's output and score, the mean and its interval (no torch).

Units: an item scores 0..1, or None when it failed to evaluate (its `error` says why); the suite's
score and interval are points (0..100). A failed item counts as 0 in the mean, so a model never
gains by failing; `failures` says how many there were.

The interval is a seeded percentile bootstrap whose seed is derived from the suite sha, so the same
item scores always give the same interval, whoever computes it.

Results are cached by `eval_cache_key(model sha, suite sha, decoding)`, where decoding is the
`effective_decoding` of the run: everything besides the weights and the suite that decides outputs.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from app.evaluation.stats import bootstrap_mean_ci, derive_seed, to_points

RESULT_FORMAT = "suite-result/1"
# /2: graders changed (exact_match folds Unicode forms, regex flag "a", choice ties are misses).
CACHE_KEY_FORMAT = "eval-cache/2"
CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 2000
FAILED_ITEM_SCORE = 0.0


@dataclass(frozen=True)
class SuiteScore:
    """A suite mean with its confidence interval, in points."""

    score: float
    ci_low: float
    ci_high: float

    def __post_init__(self) -> None:
        if not all(math.isfinite(value) for value in (self.score, self.ci_low, self.ci_high)):
            raise ValueError("score and interval must be finite numbers")
        if self.ci_low > self.ci_high:
            raise ValueError(f"ci_low {self.ci_low} is above ci_high {self.ci_high}")


@dataclass(frozen=True)
class ItemRecord:
    """One item's result. `output` is the generated text (for choice items: the option the model
    scored highest); `transient` marks failures raised by the backend or model, which a retry may
    not repeat, as opposed to deterministic ones (prompt too long, chat template, grader)."""

    item_id: str
    output: str
    score: float | None
    error: str | None = None
    transient: bool = False
    option_logliks: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.score is None and not self.error:
            raise ValueError(f"item {self.item_id!r} has no score and no error")
        if self.score is not None and not 0.0 <= self.score <= 1.0:
            raise ValueError(f"item {self.item_id!r} score must be in 0..1, got {self.score!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "item_id": self.item_id,
            "output": self.output,
            "score": self.score,
            "error": self.error,
            "transient": self.transient,
            "option_logliks": None if self.option_logliks is None else list(self.option_logliks),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ItemRecord:
        logliks = data.get("option_logliks")
        score = data["score"]
        return cls(
            item_id=str(data["item_id"]),
            output=str(data["output"]),
            score=None if score is None else float(score),
            error=data.get("error"),
            transient=bool(data.get("transient", False)),
            option_logliks=None if logliks is None else tuple(float(value) for value in logliks),
        )


def check_format(data: Any, expected: str) -> None:
    """Raise ValueError unless `data` is a mapping that says it is an `expected` document."""
    if not isinstance(data, Mapping) or data.get("format") != expected:
        found = data.get("format") if isinstance(data, Mapping) else type(data).__name__
        raise ValueError(f"not a {expected} document (format={found!r})")


def ci_seed(suite_sha256: str) -> int:
    """The bootstrap seed of a suite's interval: fixed by the suite's content alone."""
    return derive_seed(0, suite_sha256)


def summarize_scores(scores: Sequence[float | None], *, seed: int) -> tuple[float, float, float]:
    """(mean, ci_low, ci_high) in points, failed items (None) counted as 0; 95% percentile bootstrap."""
    points = to_points([FAILED_ITEM_SCORE if score is None else score for score in scores])
    return bootstrap_mean_ci(points, seed=seed, resamples=BOOTSTRAP_RESAMPLES, confidence=CONFIDENCE)


def effective_decoding(
    decoding: Mapping[str, Any],
    *,
    engine: str,
    seed: int = 0,
    batch_size: int = 16,
    chat_template_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The suite's decoding plus what else decides its outputs: the engine (vLLM and transformers
    differ in numerics), the chat-template kwargs when any, and for sampled suites the seed and batch
    size (each batch draws from its own seeded stream). Greedy outputs do not depend on the seed, so
    a greedy run is reused whatever seed asked for it."""
    effective: dict[str, Any] = {**decoding, "engine": engine}
    if chat_template_kwargs:
        effective["chat_template_kwargs"] = dict(chat_template_kwargs)
    if not decoding.get("greedy", True):
        effective["seed"] = seed
        effective["batch_size"] = batch_size
    return effective


def _canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def decoding_hash(decoding: Mapping[str, Any]) -> str:
    """sha256 hex of an effective decoding and the grading format: with the checkpoint and suite sha it
    names a score, so the gate and the caches never pair a score graded by earlier graders with a new
    one (the forgetting matrix shows recorded scores as they are)."""
    payload = {"format": CACHE_KEY_FORMAT, "decoding": dict(decoding)}
    return hashlib.sha256(_canonical_json(payload).encode("utf-8")).hexdigest()


def eval_cache_key(model_sha256: str, suite_sha256: str, decoding: Mapping[str, Any]) -> str:
    """sha256 hex naming one (model checkpoint, suite, decoding) evaluation; the same for every cache."""
    payload = {
        "format": CACHE_KEY_FORMAT,
        "model_sha256": model_sha256,
        "suite_sha256": suite_sha256,
        "decoding": dict(decoding),
    }
    return hashlib.sha256(_canonical_json(payload).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class SuiteResult:
    suite_name: str
    suite_sha256: str
    decoding: Mapping[str, Any]
    records: tuple[ItemRecord, ...]
    score: float
    ci_low: float
    ci_high: float
    n: int
    failures: int
    model_sha256: str | None = None
    confidence: float = CONFIDENCE
    meta: Mapping[str, Any] = field(default_factory=dict)  # free-form: seconds, backend details

    def __post_init__(self) -> None:
        if self.n != len(self.records) or self.n < 1:
            raise ValueError(f"n={self.n} but there are {len(self.records)} records (at least 1 needed)")
        if self.failures != sum(record.score is None for record in self.records):
            raise ValueError(f"failures={self.failures} does not match the records")
        ids = [record.item_id for record in self.records]
        if len(set(ids)) != len(ids):
            raise ValueError("item ids must be unique within a suite result")
        values = (self.score, self.ci_low, self.ci_high)
        if not all(math.isfinite(value) for value in values) or not self.ci_low <= self.score <= self.ci_high:
            raise ValueError(f"score {self.score} must be finite and inside [{self.ci_low}, {self.ci_high}]")

    @classmethod
    def from_records(
        cls,
        *,
        suite_name: str,
        suite_sha256: str,
        decoding: Mapping[str, Any],
        records: Sequence[ItemRecord],
        model_sha256: str | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> SuiteResult:
        """Score, interval and failure count computed from the records (see the module docstring)."""
        score, low, high = summarize_scores([record.score for record in records], seed=ci_seed(suite_sha256))
        return cls(
            suite_name=suite_name,
            suite_sha256=suite_sha256,
            decoding=dict(decoding),
            records=tuple(records),
            score=score,
            ci_low=low,
            ci_high=high,
            n=len(records),
            failures=sum(record.score is None for record in records),
            model_sha256=model_sha256,
            meta=dict(meta or {}),
        )

    def item_scores(self) -> dict[str, float | None]:
        """item_id -> score (None = failed), the shape SuiteComparison takes for the gate."""
        return {record.item_id: record.score for record in self.records}

    def suite_score(self) -> SuiteScore:
        """The mean and interval as a forgetting-matrix cell."""
        return SuiteScore(score=self.score, ci_low=self.ci_low, ci_high=self.ci_high)

    @property
    def has_transient_failures(self) -> bool:
        """True when an item failed for a reason a retry may not repeat (not worth caching)."""
        return any(record.transient for record in self.records)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": RESULT_FORMAT,
            "suite_name": self.suite_name,
            "suite_sha256": self.suite_sha256,
            "decoding": dict(self.decoding),
            "score": self.score,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "confidence": self.confidence,
            "n": self.n,
            "failures": self.failures,
            "model_sha256": self.model_sha256,
            "meta": dict(self.meta),
            "records": [record.to_dict() for record in self.records],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, ensure_ascii=False, allow_nan=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SuiteResult:
        """Inverse of to_dict; raises ValueError on another format or inconsistent content."""
        check_format(data, RESULT_FORMAT)
        try:
            return cls(
                suite_name=str(data["suite_name"]),
                suite_sha256=str(data["suite_sha256"]),
                decoding=dict(data["decoding"]),
                records=tuple(ItemRecord.from_dict(record) for record in data["records"]),
                score=float(data["score"]),
                ci_low=float(data["ci_low"]),
                ci_high=float(data["ci_high"]),
                n=int(data["n"]),
                failures=int(data["failures"]),
                model_sha256=data.get("model_sha256"),
                confidence=float(data.get("confidence", CONFIDENCE)),
                meta=dict(data.get("meta") or {}),
            )
        except (KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"malformed suite result: {error!r}") from error


def render_results_table(results: Sequence[SuiteResult]) -> str:
    """Fixed-width text table, one row per suite: n, score, interval (points) and failures."""
    headers = ("suite", "n", "score", "95% CI", "failures")
    body = [
        (
            result.suite_name,
            str(result.n),
            f"{result.score:.2f}",
            f"[{result.ci_low:.2f}, {result.ci_high:.2f}]",
            str(result.failures),
        )
        for result in results
    ]
    widths = [max(len(text) for text in column) for column in zip(headers, *body, strict=True)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.ljust(width) if index == 0 else cell.rjust(width)
            for index, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers), line(["-" * width for width in widths]), *(line(row) for row in body)])
