"""Problems found in an uploaded file, one per bad row, reported together, but bounded: a file of a
million bad lines must not become a million-entry report (memory, and a response nobody reads)."""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from typing import Any

# The report lists this many problems, in line order, and counts the rest.
MAX_LISTED_PROBLEMS = 100


@dataclass(frozen=True)
class RowProblem:
    """One problem with an uploaded file: 1-based line (None for the whole file), field, reason."""

    line: int | None
    field: str
    reason: str

    def __str__(self) -> str:
        if self.line is None:  # a whole-file problem: its field already says what it concerns
            return f"{self.field}: {self.reason}"
        return f"line {self.line}: {self.field}: {self.reason}"


class Problems:
    """Collects problems in the order found, keeping the first MAX_LISTED_PROBLEMS and counting all."""

    def __init__(self, limit: int = MAX_LISTED_PROBLEMS) -> None:
        self.limit = limit
        self.listed: list[RowProblem] = []
        self.total = 0

    def add(self, problem: RowProblem) -> None:
        self.total += 1
        if len(self.listed) < self.limit:
            self.listed.append(problem)

    def extend(self, problems: list[RowProblem]) -> None:
        for problem in problems:
            self.add(problem)

    def __bool__(self) -> bool:
        return self.total > 0

    def sorted(self) -> list[RowProblem]:
        return sorted(self.listed, key=lambda p: p.line or 0)


def summary(problems: list[RowProblem], total: int, what: str, shown: int) -> str:
    """'N problem(s) in <what>:' and the first `shown` of them, then how many more there are."""
    lines = "\n".join(f"  {p}" for p in problems[:shown])
    more = (
        f"\n  ... and {total - min(shown, len(problems))} more" if total > min(shown, len(problems)) else ""
    )
    return f"{total} problem(s) in {what}:\n{lines}{more}"


# A lone UTF-16 surrogate is not a character (it cannot be encoded as UTF-8, tokenized or hashed),
# and PostgreSQL cannot store NUL in text: refused in rows as the API refuses them in bodies.
_NOT_TEXT = re.compile("[\x00\ud800-\udfff]")


def _holds_non_text(value: Any) -> bool:
    if isinstance(value, str):
        return _NOT_TEXT.search(value) is not None
    if isinstance(value, dict):
        return any(_holds_non_text(k) or _holds_non_text(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_holds_non_text(v) for v in value)
    return False


def decode_json_row(text: str) -> tuple[Any, str | None]:
    """One JSONL row: (value, None), or (None, why it is not a row we can read)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, f"not valid JSON: {exc.msg} at column {exc.colno}"
    except RecursionError:
        return None, "nested too deeply"
    except ValueError:  # an integer of more digits than Python converts
        return None, f"not valid JSON: a number of more than {sys.get_int_max_str_digits()} digits"
    if _holds_non_text(value):
        return None, "holds a NUL (\\u0000) or a lone UTF-16 surrogate (such as \\ud800), which is not text"
    return value, None
