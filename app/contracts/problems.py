"""Problems found in an uploaded file, one per bad row, reported together, but bounded: a file of a
million bad lines must not become a million-entry report (memory, and a response nobody reads)."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any

from app.contracts.text import field_path, find_unstorable

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


def decode_json_row(line: int, text: str) -> tuple[Any, RowProblem | None]:
    """One JSONL row: (value, None), or (None, the problem naming the row or the field)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, RowProblem(line, "row", f"not valid JSON: {exc.msg} at column {exc.colno}")
    except RecursionError:
        return None, RowProblem(line, "row", "nested too deeply")
    except ValueError:  # an integer of more digits than Python converts
        digits = sys.get_int_max_str_digits()
        return None, RowProblem(line, "row", f"not valid JSON: a number of more than {digits} digits")
    found = find_unstorable(value)
    if found is not None:
        return None, RowProblem(line, field_path(found[0]) or "row", found[1])
    return value, None
