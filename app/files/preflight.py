"""Pre-flight report for an uploaded JSONL file: row count, every bad row (line, field, reason) and
length statistics, in tokens of the base model's tokenizer when one is available, else characters.

Token counts approximate the chat template: messages are rendered as ``<role>: <content>`` lines, so
they miss the template's special tokens (a few per message). They are for spotting outliers before a
job is queued; the worker checks exact lengths against the real template.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from app.contracts.demonstrations import DatasetError, parse_demonstrations
from app.evaluation.suites import SuiteError, SuiteMeta, parse_suite_jsonl

PREFLIGHT_SUITE_NAME = "preflight"  # SuiteMeta needs a name; the real one is given at POST /v1/suites


@dataclass(frozen=True)
class LengthCounter:
    """Counts lengths in tokens (with a tokenizer) or characters; `source` says which and from where."""

    tokenizer: Tokenizer | None
    source: dict[str, Any]

    @property
    def unit(self) -> str:
        return "tokens" if self.tokenizer is not None else "characters"

    def lengths(self, texts: Sequence[str]) -> list[int]:
        if self.tokenizer is None:
            return [len(text) for text in texts]
        return [len(enc.ids) for enc in self.tokenizer.encode_batch(list(texts), add_special_tokens=False)]


@lru_cache(maxsize=8)
def _load_tokenizer(path: str, mtime_ns: int) -> Tokenizer:
    return Tokenizer.from_file(path)


def load_tokenizer(model_dir: Path) -> Tokenizer | None:
    """The directory's tokenizer.json, cached while the file is unchanged; None when it does not load."""
    path = model_dir / "tokenizer.json"
    try:
        return _load_tokenizer(str(path), path.stat().st_mtime_ns)
    except Exception:  # missing file or a tokenizer this library cannot read: fall back to characters
        return None


def render_messages(messages: Sequence[dict[str, str]]) -> str:
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


def length_stats(lengths: Sequence[int]) -> dict[str, float]:
    ordered = sorted(lengths)
    p95 = ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]  # nearest rank
    return {"min": ordered[0], "mean": round(statistics.fmean(ordered), 2), "p95": p95, "max": ordered[-1]}


def _invalid_report(text: str, problems: Sequence[Any], total: int) -> dict[str, Any]:
    """The first problems (MAX_LISTED_PROBLEMS) with how many there are in all, and the number of
    non-blank lines (rows) the file has."""
    rows = sum(1 for line in text.removeprefix("\ufeff").split("\n") if line.strip())  # as parsers read
    listed = [{"line": p.line, "field": p.field, "reason": p.reason} for p in problems]
    return {"valid": False, "rows": rows, "problems": listed, "problems_total": total, "lengths": None}


def preflight_demonstrations(text: str, counter: LengthCounter) -> dict[str, Any]:
    """Report for a demonstrations file; `valid` is False when any row is bad."""
    try:
        rows = parse_demonstrations(text)
    except DatasetError as exc:
        return _invalid_report(text, exc.problems, exc.total)
    lengths = {
        "unit": counter.unit,
        "source": counter.source,
        "query": length_stats(counter.lengths([render_messages(r.query_dicts()) for r in rows])),
        "demonstration": length_stats(counter.lengths([r.demonstration for r in rows])),
    }
    return {"valid": True, "rows": len(rows), "problems": [], "problems_total": 0, "lengths": lengths}


def preflight_suite(text: str, grader: str, counter: LengthCounter) -> dict[str, Any]:
    """Report for a regression-suite file, with references checked for `grader` (rows may override it)."""
    try:
        suite = parse_suite_jsonl(text, SuiteMeta(name=PREFLIGHT_SUITE_NAME, grader=grader))
    except SuiteError as exc:
        return _invalid_report(text, exc.problems, exc.total)
    lengths = {
        "unit": counter.unit,
        "source": counter.source,
        "prompt": length_stats(counter.lengths([render_messages(item.messages()) for item in suite.items])),
    }
    return {"valid": True, "rows": len(suite), "problems": [], "problems_total": 0, "lengths": lengths}
