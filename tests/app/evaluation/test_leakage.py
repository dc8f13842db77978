"""Template leakage: phrases from the teacher template and the 135M probes, matched as whole words."""

from __future__ import annotations

import pytest

from app.evaluation.leakage import (
    OBSERVED_LEAKAGE_PHRASES,
    LeakageReport,
    default_leakage_phrases,
    find_leaked_phrases,
    template_leakage,
    template_phrases,
)
from app.training.stage_config import PAPER_TEACHER_TEMPLATE


def test_paper_template_gives_its_fixed_clauses() -> None:
    assert template_phrases(PAPER_TEACHER_TEMPLATE) == (
        "This is an example for a response to the question",
        "Now answer with a response of your own",
        "including the thinking process",
    )


def test_short_clauses_and_placeholders_are_not_phrases() -> None:
    # "Example:" alone is an ordinary word in answers; {{ }} are literal braces, not placeholders.
    template = "Example: {demonstration}\nQuestion {{literal}}: {question}\nUse the example above, please."
    assert template_phrases(template) == ("Use the example above",)
    assert template_phrases("{question}\n\n{demonstration}") == ()


def test_defaults_are_observed_phrases_plus_template_clauses_without_repeats() -> None:
    phrases = default_leakage_phrases()
    assert phrases[: len(OBSERVED_LEAKAGE_PHRASES)] == OBSERVED_LEAKAGE_PHRASES
    # The paper template's first sentence is also an observed phrase: listed once.
    assert sum(p.casefold() == "this is an example for a response to the question" for p in phrases) == 1
    assert "Now answer with a response of your own" in phrases
    assert default_leakage_phrases(None) == OBSERVED_LEAKAGE_PHRASES
    custom = default_leakage_phrases(
        "{question}\nStudy the worked solution below carefully:\n{demonstration}"
    )
    assert custom[-1] == "Study the worked solution below carefully"


@pytest.mark.parametrize(
    ("output", "leaked"),
    [
        ("Based on the text, the founder is Mirela Kastov.", True),
        ("BASED   ON\nTHE TEXT: Paris", True),
        ("The answer to this question is: 4", True),
        ("Following the example, 2 + 2 = 4.", True),
        ("based on the textbook, it is Paris", False),  # whole words only
        ("It is based on text from the article.", False),
        ("Paris.", False),
    ],
)
def test_matching_is_whole_words_case_and_spacing_insensitive(output: str, leaked: bool) -> None:
    assert bool(find_leaked_phrases(output, OBSERVED_LEAKAGE_PHRASES)) is leaked


def test_counts_outputs_and_phrases() -> None:
    outputs = [
        "Based on the text, Paris. Following the example, Rome.",
        "Rome.",
        "This is an example for a response to the question: 4",
        "based on the text it is 4",
    ]
    report = template_leakage(outputs)
    assert (report.n, report.leaked, report.leaked_indices) == (4, 3, (0, 2, 3))
    assert report.rate == pytest.approx(0.75)
    assert report.by_phrase["Based on the text"] == 2
    assert report.by_phrase["Following the example"] == 1
    assert report.by_phrase["This is an example for a response to the question"] == 1
    assert report.by_phrase["Now answer with a response of your own"] == 0
    warning = report.warning("teacher answers")
    assert warning is not None
    assert warning.startswith("3 of 4 teacher answers contain teacher-template phrases")
    assert "'Based on the text' (2)" in warning
    assert LeakageReport.from_dict(report.to_dict()) == report


def test_configurable_phrases_and_no_warning_when_clean() -> None:
    report = template_leakage(["As shown in the passage, 4.", "4"], phrases=["as shown in the passage"])
    assert (report.leaked, report.leaked_indices) == (1, (0,))
    clean = template_leakage(["4", "Paris"])
    assert clean.leaked == 0 and clean.warning() is None
    assert template_leakage([]).rate == 0.0
    with pytest.raises(ValueError, match="no words"):
        template_leakage(["x"], phrases=["..."])
