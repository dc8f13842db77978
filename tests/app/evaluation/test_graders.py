"""Graders: positive and negative cases, normalization edge cases, and tool_call on real ToolAlpaca rows."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import regex

from app.evaluation.graders import (
    GRADERS,
    KNOWN_GRADERS,
    compile_reference_regex,
    first_number,
    grade,
    grade_choice,
    normalize_text,
    parse_react_tool_calls,
    parse_tool_call_reference,
    regex_expansion,
    tool_call_reference_from_golden,
    validate_grader_options,
)

REPO_ROOT = Path(__file__).resolve().parents[3]
TOOLALPACA_EVAL = REPO_ROOT / ".." / "shared" / "data" / "toolalpaca-eval.jsonl"


# --------------------------------------------------------------------------- exact_match


@pytest.mark.parametrize(
    ("output", "reference"),
    [
        ("Paris", "paris"),
        ("  The   capital\n is\tParis ", "the capital is paris"),
        ("Paris.", "Paris"),
        ('"Paris"', "Paris"),
        ("**Paris**!", "paris"),
        ("STRASSE", "straße"),  # casefold, not lower()
        ("cafe\u0301", "caf\u00e9"),  # decomposed and composed é: the same text
        ("\uff14\uff12", "42"),  # fullwidth digits
        ("-5", "-5."),
        (".5", ".5"),
    ],
)
def test_exact_match_accepts_normalized_equal(output: str, reference: str) -> None:
    assert grade("exact_match", output, reference) == 1.0


@pytest.mark.parametrize(
    ("output", "reference"),
    [
        ("Paris, France", "Paris"),
        ("-5", "5"),  # a leading minus is part of the number, not edge punctuation
        ("5", "5.0"),
        ("pa ris", "paris"),
        ("", "paris"),
        ("23", "2\u00b3"),  # superscript: not the same number (NFKC would fold it)
        ("H2O", "H\u2082O"),
    ],
)
def test_exact_match_rejects_different_answers(output: str, reference: str) -> None:
    assert grade("exact_match", output, reference) == 0.0


def test_exact_match_any_reference_matches() -> None:
    assert grade("exact_match", "NYC", ["New York", "nyc"]) == 1.0
    assert grade("exact_match", "Boston", ["New York", "nyc"]) == 0.0


def test_normalize_text_keeps_inner_punctuation() -> None:
    assert normalize_text("  U.S.A.  ") == "u.s.a"
    assert normalize_text("(e.g., this)") == "e.g., this"
    assert normalize_text("...") == ""


# --------------------------------------------------------------------------- contains


@pytest.mark.parametrize(
    ("output", "reference"),
    [
        ("The cat sat.", "cat"),
        ("THE CAT", "cat"),
        ("the black\n   cat sat", "black cat"),
        ("I write C++.", "c++"),
        ("see (.NET) docs", ".net"),
        ("cat", "cat"),
    ],
)
def test_contains_finds_word_bounded_reference(output: str, reference: str) -> None:
    assert grade("contains", output, reference) == 1.0


@pytest.mark.parametrize(
    ("output", "reference"),
    [
        ("concatenate", "cat"),
        ("cats everywhere", "cat"),
        ("I write C++11", "c++"),
        ("ASP.NET core", ".net"),
        ("the value is 13.5", "3.5"),
        ("dog", "cat"),
    ],
)
def test_contains_rejects_partial_words(output: str, reference: str) -> None:
    assert grade("contains", output, reference) == 0.0


# --------------------------------------------------------------------------- regex


def test_regex_is_case_sensitive_by_default() -> None:
    assert grade("regex", "Answer: B", r"Answer:\s*B") == 1.0
    assert grade("regex", "answer: b", r"Answer:\s*B") == 0.0
    assert grade("regex", "answer: b", r"Answer:\s*B", {"flags": "i"}) == 1.0


def test_regex_searches_anywhere_and_any_pattern() -> None:
    assert grade("regex", "so the result is 42.", [r"^41$", r"\b42\b"]) == 1.0
    assert grade("regex", "line1\nfinal", r"^final$") == 0.0
    assert grade("regex", "line1\nfinal", r"^final$", {"flags": "m"}) == 1.0


def test_regex_rejects_unknown_flag() -> None:
    with pytest.raises(ValueError, match="flag"):
        grade("regex", "x", "x", {"flags": "q"})


def test_regex_flag_letters_are_the_regex_modules_flags() -> None:
    # re.ASCII has the value of regex.VERSION1, under which "ai" folds "ß" to "SS".
    assert grade("regex", "café", r"^\w+$") == 1.0
    assert grade("regex", "café", r"^\w+$", {"flags": "a"}) == 0.0
    assert grade("regex", "STRASSE", "straße", {"flags": "ai"}) == 0.0


@pytest.mark.parametrize(
    "pattern", ["a{10000000}", "(?:(?:(?:a{50}){50}){50}){50}", r"\p{L}{100000}", "a" * 2001]
)
def test_regex_too_large_to_compile_is_refused_before_compiling(pattern: str) -> None:
    # Compiling a{10000000} alone takes seconds and gigabytes; it must be refused by measurement.
    with pytest.raises(regex.error, match=r"at most|expand"):
        compile_reference_regex(pattern, {})
    with pytest.raises(ValueError, match="cannot be used"):
        grade("regex", "aaa", pattern)


def test_regex_in_verbose_mode_counts_spaced_out_repeats() -> None:
    # With the x flag `regex` reads "{1 0 0 0 0 0 0}" as a count of a million; `re` reads it as text.
    with pytest.raises(regex.error, match="expand"):
        compile_reference_regex("(?:ab){1 0 0 0 0 0 0}", {"flags": "x"})
    compile_reference_regex("(?:ab){1 0}", {"flags": "x"})


def test_regex_nested_too_deeply_is_refused_not_a_crash() -> None:
    with pytest.raises(regex.error, match="nests too deeply"):
        compile_reference_regex("(" * 400 + "a" + ")" * 400, {})


def test_regex_expansion_counts_nested_repeats() -> None:
    assert regex_expansion("a{1000}", 0) == 1000
    assert regex_expansion("(?:ab{10}){20}", 0) == 20 * (1 + 10)
    assert regex_expansion(r"\p{L}{3}\d{4}", 0) == 12  # regex-only syntax: counts multiplied
    compile_reference_regex(r"\d{3}-\d{3}-\d{4}", {})


# --------------------------------------------------------------------------- numeric


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is 42.", 42.0),
        ("-3.5 degrees", -3.5),
        ("total: 1,234,567.89 USD", 1234567.89),
        ("about 6.02e23 atoms", 6.02e23),
        ("rate 1.5E-3", 1.5e-3),
        ("just .5 left", 0.5),
        ("\u22127 (Unicode minus)", -7.0),
        ("$1,000", 1000.0),
        ("1,2345", 1.0),  # not a valid thousands group: read the leading 1
        ("H2O weighs 18 g", 18.0),  # digits glued to a word are not a number
    ],
)
def test_first_number_forms(text: str, expected: float) -> None:
    value = first_number(text)
    assert value is not None
    assert math.isclose(value, expected, rel_tol=1e-12)


def test_first_number_none_when_absent() -> None:
    assert first_number("no digits here") is None


def test_numeric_grader_tolerances() -> None:
    assert grade("numeric", "It is 1,234.", "1234") == 1.0
    assert grade("numeric", "It is 1234.0000001", "1234") == 1.0  # default abs_tol 1e-6
    assert grade("numeric", "It is 1234.01", "1234") == 0.0
    assert grade("numeric", "It is 1234.01", "1234", {"abs_tol": 0.05}) == 1.0
    assert grade("numeric", "It is 101", "100", {"rel_tol": 0.02}) == 1.0
    assert grade("numeric", "It is 103", "100", {"rel_tol": 0.02}) == 0.0
    assert grade("numeric", "6.0221e23", "6.022e23", {"rel_tol": 1e-3}) == 1.0


def test_numeric_uses_the_first_number_only() -> None:
    assert grade("numeric", "3 apples, then 5", "5") == 0.0
    assert grade("numeric", "no number", "5") == 0.0
    assert grade("numeric", "-5", "5") == 0.0
    assert grade("numeric", "x = 7", ["6", "7"]) == 1.0


def test_numeric_reference_must_be_a_number() -> None:
    with pytest.raises(ValueError, match="not a number"):
        grade("numeric", "5", "five")


# --------------------------------------------------------------------------- json_match


def test_json_match_whole_output_and_key_order() -> None:
    assert grade("json_match", '{"b": 2, "a": [1, 2]}', '{"a": [1, 2], "b": 2}') == 1.0
    assert grade("json_match", '{"a": [2, 1]}', '{"a": [1, 2]}') == 0.0


def test_json_match_inside_fences_and_prose() -> None:
    fenced = 'Sure!\n```json\n{"name": "x", "n": 3}\n```\nDone.'
    assert grade("json_match", fenced, {"n": 3, "name": "x"}) == 1.0
    prose = 'The object is {"ok": true} as requested [see above].'
    assert grade("json_match", prose, '{"ok": true}') == 1.0


def test_json_match_strict_types() -> None:
    assert grade("json_match", '{"v": 1.0}', '{"v": 1}') == 1.0
    assert grade("json_match", '{"v": true}', '{"v": 1}') == 0.0
    assert grade("json_match", '{"v": "1"}', '{"v": 1}') == 0.0
    assert grade("json_match", '{"v": null}', '{"v": null}') == 1.0


def test_json_match_array_and_missing_json() -> None:
    assert grade("json_match", "list: [1, 2, 3]", "[1, 2, 3]") == 1.0
    assert grade("json_match", "no json at all", "[1]") == 0.0


def test_json_match_too_deep_output_is_no_answer() -> None:
    assert grade("json_match", "Here you go: " + "[" * 3000, "[1]") == 0.0
    assert grade("json_match", "[" * 3000 + "]" * 3000, "[1]") == 0.0


def test_json_match_invalid_reference_raises() -> None:
    with pytest.raises(ValueError, match="not valid JSON"):
        grade("json_match", "{}", "{not json")


# --------------------------------------------------------------------------- tool_call


def render_react(golden_actions: list[dict[str, Any]]) -> str:
    """Golden actions written back as a ReAct transcript, the way a correct model would answer."""
    steps = []
    for action in golden_actions:
        raw_input = action["action_input"]
        text_input = raw_input if isinstance(raw_input, str) else json.dumps(raw_input)
        steps.append(
            f"Thought: I should call {action['action']}.\n"
            f"Action: {action['action']}\n"
            f"Action Input: {text_input}\n"
            "Observation: (tool output)"
        )
    return "\n".join(steps) + "\nThought: I now know the final answer.\nFinal Answer: done."


def load_toolalpaca() -> list[dict[str, Any]]:
    if not TOOLALPACA_EVAL.is_file():
        pytest.skip(f"ToolAlpaca eval set not found at {TOOLALPACA_EVAL.resolve()} (shared data absent)")
    lines = TOOLALPACA_EVAL.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def test_tool_call_golden_transcripts_score_one_on_every_row() -> None:
    rows = load_toolalpaca()
    assert len(rows) == 97
    for index, row in enumerate(rows):
        reference = tool_call_reference_from_golden(row["golden_actions"])
        assert grade("tool_call", render_react(row["golden_actions"]), reference) == 1.0, index


def test_tool_call_changed_action_name_scores_zero() -> None:
    for row in load_toolalpaca():
        reference = tool_call_reference_from_golden(row["golden_actions"])
        changed = [dict(action) for action in row["golden_actions"]]
        changed[0]["action"] = changed[0]["action"] + "X"
        assert grade("tool_call", render_react(changed), reference) == 0.0


def test_tool_call_changed_input_value_scores_zero() -> None:
    checked = 0
    for row in load_toolalpaca():
        reference = tool_call_reference_from_golden(row["golden_actions"])
        changed = [dict(action) for action in row["golden_actions"]]
        last = changed[-1]
        arguments = json.loads(last["action_input"])
        if not arguments:
            continue
        key = sorted(arguments)[0]
        arguments[key] = ["a value no golden row uses"]
        last["action_input"] = json.dumps(arguments)
        assert grade("tool_call", render_react(changed), reference) == 0.0
        checked += 1
    assert checked > 50


def test_tool_call_action_order_is_irrelevant_for_names() -> None:
    golden = [
        {"action": "getWeather", "action_input": '{"city": "Paris"}'},
        {"action": "getTime", "action_input": '{"zone": "CET"}'},
        {"action": "getWeather", "action_input": "{}"},
    ]
    reference = tool_call_reference_from_golden(golden)
    reordered = [golden[1], golden[2], golden[0]]
    assert grade("tool_call", render_react(reordered), reference) == 1.0
    missing_one = golden[:2]
    assert grade("tool_call", render_react(missing_one), reference) == 0.0
    extra = [*golden, {"action": "getTime", "action_input": "{}"}]
    assert grade("tool_call", render_react(extra), reference) == 0.0


def test_tool_call_merges_inputs_with_later_keys_winning() -> None:
    golden = [
        {"action": "search", "action_input": '{"q": "a", "page": 1}'},
        {"action": "search", "action_input": '{"page": 2}'},
    ]
    reference = tool_call_reference_from_golden(golden)
    # Same merged inputs ({"q": "a", "page": 2}) with a different split still passes, as in the paper.
    split_differently = [
        {"action": "search", "action_input": '{"q": "a"}'},
        {"action": "search", "action_input": '{"page": 2}'},
    ]
    assert grade("tool_call", render_react(split_differently), reference) == 1.0
    assert grade("tool_call", render_react(list(reversed(golden))), reference) == 0.0  # page would be 1


def test_tool_call_tolerant_parsing() -> None:
    reference = tool_call_reference_from_golden(
        [{"action": "lookup", "action_input": {"id": 7, "tags": ["x"]}}]
    )
    multiline = 'Action: lookup\nAction Input: {\n  "id": 7,\n  "tags": ["x"]\n}\nObservation: ok'
    fenced = 'Action: `lookup`\nAction Input:\n```json\n{"id": 7, "tags": ["x"]}\n```\n'
    trailing = 'Action: lookup\nAction Input: {"id": 7, "tags": ["x"]} (that is the id)\nFinal Answer: ok'
    at_end = 'Thought: go\nAction: lookup\nAction Input: {"tags": ["x"], "id": 7}'
    for output in (multiline, fenced, trailing, at_end):
        assert grade("tool_call", output, reference) == 1.0, output


@pytest.mark.parametrize(
    "output",
    [
        "Action: lookup\nObservation: forgot the input",
        "Action: lookup\nAction Input: {id: 7}\n",  # not JSON
        'Action: lookup\nAction Input: ["id", 7]\n',  # not an object
        'Action Input: {"id": 7}\nAction: lookup\n',  # input before its action
        "Final Answer: I cannot help.",
        "",
    ],
)
def test_tool_call_malformed_outputs_score_zero(output: str) -> None:
    reference = tool_call_reference_from_golden([{"action": "lookup", "action_input": {"id": 7}}])
    assert grade("tool_call", output, reference) == 0.0


def test_parse_react_tool_calls_reports_validity() -> None:
    parsed = parse_react_tool_calls('Action: a\nAction Input: {"x": 1}\nAction: b\nAction Input: {}')
    assert parsed.valid
    assert [action.name for action in parsed.actions] == ["a", "b"]
    assert not parse_react_tool_calls("Action: a\nAction Input: nope").valid


@pytest.mark.parametrize(
    "bad",
    [
        [],
        [{"action": "a"}],
        [{"action": "", "action_input": "{}"}],
        [{"action": "a", "action_input": "{broken"}],
        [{"action": "a", "action_input": "[1]"}],
        [{"action": "a", "action_input": "{}", "extra": 1}],
    ],
)
def test_tool_call_reference_from_golden_rejects_bad_actions(bad: list[dict[str, Any]]) -> None:
    with pytest.raises(ValueError):
        tool_call_reference_from_golden(bad)


def test_tool_call_reference_round_trips() -> None:
    reference = tool_call_reference_from_golden([{"action": "a", "action_input": '{"k": [1, 2]}'}])
    actions = parse_tool_call_reference(reference)
    assert actions[0].name == "a"
    assert dict(actions[0].arguments) == {"k": [1, 2]}


# --------------------------------------------------------------------------- choice and registry


def test_grade_choice_needs_the_strictly_highest_likelihood() -> None:
    assert grade_choice([-3.0, -1.0, -2.0], 1) == 1.0
    assert grade_choice([-3.0, -1.0, -2.0], 2) == 0.0
    # A tie for the highest is a miss wherever the reference stands.
    assert grade_choice([-1.0, -1.0], 0) == 0.0
    assert grade_choice([-1.0, -1.0], 1) == 0.0
    assert grade_choice([math.nan, -5.0], 1) == 1.0
    # A diverged model (NaN everywhere) earns nothing, even when the answer is the first option.
    assert grade_choice([math.nan, math.nan, math.nan], 0) == 0.0


def test_grade_choice_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        grade_choice([], 0)
    with pytest.raises(ValueError):
        grade_choice([0.0, 1.0], 2)


def test_grader_registry() -> None:
    assert set(GRADERS) == {"exact_match", "contains", "regex", "numeric", "json_match", "tool_call"}
    assert frozenset({*GRADERS, "choice"}) == KNOWN_GRADERS
    with pytest.raises(ValueError, match="grade_choice"):
        grade("choice", "A", "A")
    with pytest.raises(ValueError, match="unknown grader"):
        grade("fuzzy", "A", "A")


def test_validate_grader_options() -> None:
    assert validate_grader_options({"abs_tol": 0.1, "rel_tol": 0, "flags": "is"}) == []
    problems = validate_grader_options({"abs_tol": -1, "flags": "z", "tolerance": 1})
    assert len(problems) == 3


def test_importing_evaluation_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "import app.evaluation, app.evaluation.graders, app.evaluation.suites\n"
        "import app.evaluation.stats, app.evaluation.gate, app.registry.forgetting.matrix\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "assert 'matplotlib' not in sys.modules, 'matplotlib should load only when plotting'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
