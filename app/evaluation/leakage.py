"""Teacher-template leakage: outputs that repeat the teacher prompt's wording in answers of their own.

SDFT students learn from a teacher that reads its demonstration inside a fixed template. Probes at
135M found students writing "The answer to this question is: …" or "Based on the text" into
unrelated answers (docs/reference/small-scale-probes.md §3; docs/reference/sdft-algorithm.md §10 item 14).
`template_leakage` counts outputs containing such phrases: the readiness probe runs it on the
teacher's answers (what the student will imitate), and evaluations can run it on their outputs to warn.

Matching is by whole words, case-insensitive, with any run of spaces or punctuation between words,
so "based on the text," and "Based on  the text" both match "Based on the text".
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from app.training.stage_config import PAPER_TEACHER_TEMPLATE

# Phrases seen leaking in the 135M probes, beyond the template's own sentences.
OBSERVED_LEAKAGE_PHRASES: tuple[str, ...] = (
    "The answer to this question is",
    "This is an example for a response to the question",
    "Based on the text",
    "Following the example",
)
# Shorter clauses of a template ("Example:", "Answer:") are ordinary words in answers; matching them
# would turn every output into a false alarm.
MIN_PHRASE_WORDS = 3
# Clause boundaries inside the template's fixed text.
_CLAUSE_BREAK = re.compile(r"[\n.,;:!?]+")
_WORD = re.compile(r"\w+")


def template_phrases(template: str, *, min_words: int = MIN_PHRASE_WORDS) -> tuple[str, ...]:
    """The fixed clauses of a teacher template (text outside its {placeholders}), in order.

    Clauses are split at newlines and sentence or clause punctuation; those shorter than min_words
    words are dropped. Escaped braces ({{ and }}) are read as the literal text str.format makes of them.
    """
    literal = "\n".join(text for text, *_ in string.Formatter().parse(template))
    clauses = (clause.strip() for clause in _CLAUSE_BREAK.split(literal))
    return tuple(clause for clause in clauses if len(_WORD.findall(clause)) >= min_words)


def default_leakage_phrases(template: str | None = PAPER_TEACHER_TEMPLATE) -> tuple[str, ...]:
    """The observed leakage phrases plus the template's fixed clauses, without case-insensitive repeats."""
    phrases = [*OBSERVED_LEAKAGE_PHRASES, *(template_phrases(template) if template else ())]
    seen: set[tuple[str, ...]] = set()
    unique: list[str] = []
    for phrase in phrases:
        words = _phrase_words(phrase)
        if words and words not in seen:
            seen.add(words)
            unique.append(phrase)
    return tuple(unique)


def _phrase_words(phrase: str) -> tuple[str, ...]:
    return tuple(_WORD.findall(phrase.casefold()))


@lru_cache(maxsize=256)
def _phrase_pattern(phrase: str) -> re.Pattern[str]:
    words = _phrase_words(phrase)
    if not words:
        raise ValueError(f"leakage phrase {phrase!r} has no words")
    return re.compile(r"(?<!\w)" + r"\W+".join(re.escape(word) for word in words) + r"(?!\w)")


def find_leaked_phrases(output: str, phrases: Sequence[str]) -> tuple[str, ...]:
    """The phrases (as given) that occur in output, in the order of `phrases`."""
    text = output.casefold()
    return tuple(phrase for phrase in phrases if _phrase_pattern(phrase).search(text))


@dataclass(frozen=True)
class LeakageReport:
    """How many of n outputs contain at least one phrase, and how many outputs contain each phrase."""

    n: int
    leaked: int
    leaked_indices: tuple[int, ...]
    by_phrase: Mapping[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.leaked / self.n if self.n else 0.0

    def warning(self, what: str = "outputs") -> str | None:
        """A one-line warning naming the most frequent phrases, or None when nothing leaked."""
        if not self.leaked:
            return None
        top = sorted(((count, phrase) for phrase, count in self.by_phrase.items() if count), reverse=True)
        shown = ", ".join(f"{phrase!r} ({count})" for count, phrase in top[:3])
        return f"{self.leaked} of {self.n} {what} contain teacher-template phrases: {shown}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "leaked": self.leaked,
            "leaked_indices": list(self.leaked_indices),
            "by_phrase": dict(self.by_phrase),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LeakageReport:
        return cls(
            n=int(data["n"]),
            leaked=int(data["leaked"]),
            leaked_indices=tuple(int(index) for index in data["leaked_indices"]),
            by_phrase={str(phrase): int(count) for phrase, count in data["by_phrase"].items()},
        )


def template_leakage(outputs: Sequence[str], phrases: Sequence[str] | None = None) -> LeakageReport:
    """Count outputs that contain any phrase (default: `default_leakage_phrases()` for the paper template)."""
    chosen = tuple(phrases) if phrases is not None else default_leakage_phrases()
    by_phrase = dict.fromkeys(chosen, 0)
    leaked_indices: list[int] = []
    for index, output in enumerate(outputs):
        found = find_leaked_phrases(output, chosen)
        for phrase in found:
            by_phrase[phrase] += 1
        if found:
            leaked_indices.append(index)
    return LeakageReport(
        n=len(outputs), leaked=len(leaked_indices), leaked_indices=tuple(leaked_indices), by_phrase=by_phrase
    )
