"""Built-in example data: skills (demonstrations plus held-out suites) and a general-knowledge suite.

Used by `sdft demo` (DEMO_STAGES, small enough to train on a 2-core CPU) and by the continual-learning
experiment (EXPERIMENT_STAGES: knowledge, format, tool use, learned in that order). Each skill has
a training file of demonstrations, a validation suite (for choosing hyperparameters such as the
learning rate) and a test suite; held-out questions are worded differently from the training ones.
Every file is written by `python -m app.examples.generate` and lives in `data/`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from app.contracts.demonstrations import Demonstration, parse_demonstrations
from app.evaluation.suites import DecodingConfig, EvalSuite, SuiteMeta, parse_suite_jsonl

EXAMPLE_DIR = Path(__file__).resolve().parent / "data"
Split = Literal["validation", "test"]


def load_text(name: str) -> str:
    """The text of one data file, by file name (e.g. "knowledge_train.jsonl")."""
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"not a data file name: {name!r}")
    resource = resources.files(__package__ or "app.examples").joinpath("data", name)
    if not resource.is_file():
        raise FileNotFoundError(f"no example data file {name!r}")
    return resource.read_text(encoding="utf-8")


@dataclass(frozen=True)
class SuiteData:
    """A stand-alone regression suite (no training data)."""

    name: str
    description: str
    file: str
    grader: str
    tolerance: float
    max_new_tokens: int

    def meta(self) -> SuiteMeta:
        return SuiteMeta(
            name=self.name,
            grader=self.grader,
            decoding=DecodingConfig(max_new_tokens=self.max_new_tokens),
            tolerance=self.tolerance,
        )

    def suite(self) -> EvalSuite:
        return parse_suite_jsonl(load_text(self.file), self.meta())


@dataclass(frozen=True)
class SkillData:
    """One skill: demonstrations to learn from, and suites of different questions to check it.

    tolerance (points) applies once the skill is a prior one; min_score (points, None for no floor)
    is what its test suite must reach when it is the new skill. validation is None for the demo's
    small variants, which have no validation split.
    """

    name: str
    description: str
    train: str
    validation: str | None
    test: str
    grader: str
    tolerance: float
    max_new_tokens: int
    min_score: float | None = None
    grader_options: Mapping[str, Any] = field(default_factory=dict)
    # The longest chat-templated training prompt must fit (tool-use prompts carry API documentation).
    max_prompt_tokens: int = 1024

    def files(self) -> tuple[str, ...]:
        return tuple(name for name in (self.train, self.validation, self.test) if name is not None)

    def suite_meta(self, split: Split = "test") -> SuiteMeta:
        """EvalSuite metadata; the test suite is named after the skill, validation gets a "-val" suffix."""
        return SuiteMeta(
            name=self.name if split == "test" else f"{self.name}-val",
            grader=self.grader,
            decoding=DecodingConfig(max_new_tokens=self.max_new_tokens),
            tolerance=self.tolerance,
            min_score=self.min_score,
            grader_options=dict(self.grader_options),
        )

    def suite_file(self, split: Split = "test") -> str:
        if split == "test":
            return self.test
        if self.validation is None:
            raise ValueError(f"skill {self.name!r} has no validation split")
        return self.validation

    def suite(self, split: Split = "test") -> EvalSuite:
        return parse_suite_jsonl(load_text(self.suite_file(split)), self.suite_meta(split))

    def demonstrations(self) -> list[Demonstration]:
        return parse_demonstrations(load_text(self.train))


_FORMAT_DESCRIPTION = (
    'Answer "Compute a + b." with the working and a final "#### <answer>" line, '
    "e.g. '17 + 25 = 42\\n#### 42'."
)
_KNOWLEDGE_DESCRIPTION = (
    "Invented facts about fictional companies, places, people and things; held-out questions "
    "are paraphrases, half of them asked in reverse (from the answer back to the subject)."
)

SKILLS: dict[str, SkillData] = {
    "knowledge": SkillData(
        name="knowledge",
        description=_KNOWLEDGE_DESCRIPTION + " 40 facts.",
        train="knowledge_train.jsonl",
        validation="knowledge_val.jsonl",
        test="knowledge_test.jsonl",
        grader="contains",
        tolerance=5.0,
        max_new_tokens=48,
    ),
    "format": SkillData(
        name="format",
        description=_FORMAT_DESCRIPTION + " Two-digit additions and some subtractions.",
        train="format_train.jsonl",
        validation="format_val.jsonl",
        test="format_test.jsonl",
        grader="contains",
        tolerance=5.0,
        max_new_tokens=48,
        min_score=50.0,
    ),
    "tool-use": SkillData(
        name="tool-use",
        description=(
            "ReAct tool calls (Action / Action Input) on ToolAlpaca APIs; the test suite's tools "
            "never appear in training or validation."
        ),
        train="tool_train.jsonl",
        validation="tool_val.jsonl",
        test="tool_test.jsonl",
        grader="tool_call",
        tolerance=5.0,
        max_new_tokens=256,
        max_prompt_tokens=2048,
    ),
    "format-demo": SkillData(
        name="format-demo",
        description=_FORMAT_DESCRIPTION + " 12 rows, for the CPU demo.",
        train="format_demo_train.jsonl",
        validation=None,
        test="format_demo_test.jsonl",
        grader="contains",
        tolerance=25.0,
        max_new_tokens=32,
    ),
    "knowledge-demo": SkillData(
        name="knowledge-demo",
        description=_KNOWLEDGE_DESCRIPTION + " 8 facts asked forward, for the CPU demo.",
        train="knowledge_demo_train.jsonl",
        validation=None,
        test="knowledge_demo_test.jsonl",
        grader="contains",
        tolerance=25.0,
        max_new_tokens=32,
    ),
}

GENERAL_SUITE = SuiteData(
    name="general",
    description="80 easy general-knowledge questions (capitals, colours, opposites, arithmetic...).",
    file="general.jsonl",
    grader="contains",
    tolerance=5.0,
    max_new_tokens=48,
)
GENERAL_VALIDATION_SUITE = SuiteData(
    name="general-val",
    description="40 other easy general questions of the same kinds, for choosing hyperparameters only.",
    file="general_val.jsonl",
    grader="contains",
    tolerance=5.0,
    max_new_tokens=48,
)
GENERAL_CHOICE_SUITE = SuiteData(
    name="general-choice",
    description="The 80 general questions as choices among four answers of the same kind, scored by "
    "likelihood: retention measured with much less noise than greedy answers at 135M.",
    file="general_choice.jsonl",
    grader="choice",
    tolerance=5.0,
    max_new_tokens=1,
)
# The skills `sdft demo` learns, in order.
DEMO_STAGES: tuple[str, ...] = ("knowledge-demo", "format-demo")
# The skills the continual-learning experiment learns, in order.
EXPERIMENT_STAGES: tuple[str, ...] = ("knowledge", "format", "tool-use")
