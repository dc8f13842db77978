"""Problems found in an uploaded file, one per bad row, reported together, but bounded: a file of a
million bad lines must not become a million-entry report (memory, and a response nobody reads)."""

from __future__ import annotations

from dataclasses import dataclass

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
