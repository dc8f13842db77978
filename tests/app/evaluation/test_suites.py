"""Suites: parsing, validation that reports every problem at once, stable content hashes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from app.evaluation.suites import (
    ChatMessage,
    DecodingConfig,
    RowProblem,
    SuiteError,
    SuiteMeta,
    check_prompt_lengths,
    load_suite_file,
    parse_suite_jsonl,
)


def jsonl(*rows: Any) -> str:
    return "\n".join(row if isinstance(row, str) else json.dumps(row) for row in rows)


META = SuiteMeta(name="science.v1")


def problems_of(text: str, meta: SuiteMeta = META) -> list[RowProblem]:
    with pytest.raises(SuiteError) as caught:
        parse_suite_jsonl(text, meta)
    return caught.value.problems


# --------------------------------------------------------------------------- valid suites


def test_parses_string_and_chat_prompts_with_ids() -> None:
    text = jsonl(
        {"prompt": "2+2?", "reference": "4", "id": "add"},
        "",
        {
            "prompt": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Capital of France?"},
                {"role": "assistant", "content": "Which country?"},
                {"role": "user", "content": "France."},
            ],
            "reference": ["Paris", "paris, france"],
        },
        {"prompt": "Pick one", "reference": "B", "grader": "choice", "options": ["A", "B", "C"]},
    )
    suite = parse_suite_jsonl(text, META)
    assert [item.item_id for item in suite.items] == ["add", "row-3", "row-4"]
    assert [item.line for item in suite.items] == [1, 3, 4]
    assert len(suite) == 3
    first, chat, choice = suite.items
    assert first.messages() == [{"role": "user", "content": "2+2?"}]
    assert first.grader == "exact_match"
    assert isinstance(chat.prompt, tuple)
    assert chat.prompt[0] == ChatMessage(role="system", content="Be brief.")
    assert chat.references == ("Paris", "paris, france")
    assert choice.grader == "choice"
    assert choice.options == ("A", "B", "C")
    assert choice.reference_index == 1


def test_structured_references_become_json_text() -> None:
    text = jsonl(
        {"prompt": "obj", "reference": {"b": 1, "a": [1, 2]}, "grader": "json_match"},
        {"prompt": "arr", "reference": [1, 2], "grader": "json_match"},
        {"prompt": "num", "reference": 3.5, "grader": "numeric"},
        {
            "prompt": "tool",
            "reference": [{"action": "getX", "action_input": '{"k": 1}'}],
            "grader": "tool_call",
        },
    )
    items = parse_suite_jsonl(text, META).items
    assert json.loads(items[0].references[0]) == {"a": [1, 2], "b": 1}
    assert json.loads(items[1].references[0]) == [1, 2]
    assert items[2].references == ("3.5",)
    assert json.loads(items[3].references[0]) == [{"action": "getX", "action_input": {"k": 1}}]


def test_line_separator_characters_inside_strings_do_not_split_rows() -> None:
    row = json.dumps({"prompt": "a\u2028b\u0085c", "reference": "x"}, ensure_ascii=False)
    suite = parse_suite_jsonl(row + "\r\n", META)
    assert suite.items[0].prompt == "a\u2028b\u0085c"


def test_load_suite_file(tmp_path: Path) -> None:
    path = tmp_path / "suite.jsonl"
    path.write_text("\ufeff" + jsonl({"prompt": "q", "reference": "a"}) + "\n", encoding="utf-8")
    suite = load_suite_file(path, META)
    assert suite.items[0].item_id == "row-1"


# --------------------------------------------------------------------------- bad rows


BAD_ROWS: list[tuple[str, str, str]] = [
    # (row text, expected field, a word the reason must contain)
    ("{not json", "row", "JSON"),
    ("[1, 2]", "row", "object"),
    (json.dumps({"prompt": "q", "reference": "a", "answer": "x"}), "answer", "unknown"),
    (json.dumps({"reference": "a"}), "prompt", "missing"),
    (json.dumps({"prompt": "   ", "reference": "a"}), "prompt", "empty"),
    (json.dumps({"prompt": 5, "reference": "a"}), "prompt", "string"),
    (json.dumps({"prompt": [], "reference": "a"}), "prompt", "empty"),
    (json.dumps({"prompt": [{"role": "bot", "content": "hi"}], "reference": "a"}), "prompt[0].role", "role"),
    (
        json.dumps({"prompt": [{"role": "user", "content": ""}], "reference": "a"}),
        "prompt[0].content",
        "empty",
    ),
    (
        json.dumps(
            {
                "prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                "reference": "a",
            }
        ),
        "prompt[1].role",
        "last",
    ),
    (
        json.dumps(
            {
                "prompt": [
                    {"role": "user", "content": "q"},
                    {"role": "system", "content": "s"},
                    {"role": "user", "content": "q"},
                ],
                "reference": "a",
            }
        ),
        "prompt[1].role",
        "first",
    ),
    (
        json.dumps({"prompt": [{"role": "user", "content": "q", "name": "x"}], "reference": "a"}),
        "prompt[0].name",
        "unknown",
    ),
    (json.dumps({"prompt": "q"}), "reference", "missing"),
    (json.dumps({"prompt": "q", "reference": ""}), "reference", "empty"),
    (json.dumps({"prompt": "q", "reference": []}), "reference", "empty"),
    (json.dumps({"prompt": "q", "reference": ["ok", " "]}), "reference[1]", "empty"),
    (json.dumps({"prompt": "q", "reference": {"a": 1}}), "reference", "string"),
    (json.dumps({"prompt": "q", "reference": "a", "grader": "fuzzy"}), "grader", "unknown"),
    (json.dumps({"prompt": "q", "reference": "([a-z", "grader": "regex"}), "reference", "regex"),
    (json.dumps({"prompt": "q", "reference": "a{10000000}", "grader": "regex"}), "reference", "expand"),
    (json.dumps({"prompt": "q", "reference": ["ok", "?!"]}), "reference[1]", "empty answer"),
    (json.dumps({"prompt": "q", "reference": "A", "grader": "choice"}), "options", "2 options"),
    (
        json.dumps({"prompt": "q", "reference": "A", "grader": "choice", "options": ["A"]}),
        "options",
        "2 options",
    ),
    (
        json.dumps({"prompt": "q", "reference": "D", "grader": "choice", "options": ["A", "B"]}),
        "reference",
        "not one of",
    ),
    (json.dumps({"prompt": "q", "reference": "A", "options": ["A", "B"]}), "options", "choice"),
    (json.dumps({"prompt": "q", "reference": "{a: 1}", "grader": "json_match"}), "reference", "JSON"),
    (json.dumps({"prompt": "q", "reference": "about five", "grader": "numeric"}), "reference", "number"),
    (
        json.dumps({"prompt": "q", "reference": '[{"action": "x"}]', "grader": "tool_call"}),
        "reference",
        "tool actions",
    ),
    (
        json.dumps({"prompt": "q", "reference": [{"action": "x"}], "grader": "tool_call"}),
        "reference",
        "golden actions",
    ),
    (json.dumps({"prompt": "q", "reference": "a", "id": ""}), "id", "non-empty"),
]


def test_every_bad_row_is_reported_with_line_and_field_at_once() -> None:
    # Blank lines between rows are skipped but counted: bad row k sits on line 2k - 1.
    text = "\n\n".join(row for row, _, _ in BAD_ROWS)
    problems = problems_of(text)
    for index, (_, field, word) in enumerate(BAD_ROWS):
        line = 2 * index + 1
        matching = [p for p in problems if p.line == line and p.field == field]
        assert matching, f"no problem reported for line {line} field {field!r}; got {problems}"
        assert any(word.lower() in p.reason.lower() for p in matching), (line, field, matching)
    # Every bad row produced at least one problem, and nothing was reported for blank lines.
    assert {p.line for p in problems} == {2 * index + 1 for index in range(len(BAD_ROWS))}


def test_one_row_can_have_several_problems() -> None:
    row = {"prompt": [{"role": "assistant", "content": ""}], "reference": [], "extra": 1}
    fields = {p.field for p in problems_of(jsonl(row))}
    assert {"extra", "prompt[0].content", "prompt[0].role", "reference"} <= fields


def test_duplicate_ids_reported_including_generated_ones() -> None:
    text = jsonl(
        {"prompt": "a", "reference": "a", "id": "x"},
        {"prompt": "b", "reference": "b", "id": "x"},
        {"prompt": "c", "reference": "c", "id": "row-4"},
        {"prompt": "d", "reference": "d"},
    )
    problems = problems_of(text)
    assert [(p.line, p.field) for p in problems] == [(2, "id"), (4, "id")]
    assert "first on line 1" in problems[0].reason


def test_valid_rows_do_not_hide_bad_ones() -> None:
    text = jsonl({"prompt": "fine", "reference": "ok"}, {"prompt": "bad"})
    assert [(p.line, p.field) for p in problems_of(text)] == [(2, "reference")]


@pytest.mark.parametrize(
    ("row", "field", "reason"),
    [
        ('{"prompt": "q", "reference": ' + "1" * 5000 + "}", "row", "more than 4300 digits"),
        ('{"prompt": "q\\udc00", "reference": "a"}', "prompt", "lone UTF-16 surrogate"),
        ('{"prompt": "q", "reference": ["a", "b\\u0000"]}', "reference[1]", "NUL"),
        ('{"prompt": "q", "reference": NaN, "grader": "json_match"}', "reference", "NaN"),
    ],
)
def test_rows_that_are_not_text_are_named_not_raised(row: str, field: str, reason: str) -> None:
    [problem] = problems_of(jsonl({"prompt": "fine", "reference": "ok"}, row))
    assert (problem.line, problem.field) == (2, field) and reason in problem.reason


@pytest.mark.parametrize("text", ["", "\n\n   \n"])
def test_empty_suite_is_a_problem(text: str) -> None:
    assert problems_of(text) == [RowProblem(None, "suite", "suite has no items")]


def test_suite_error_message_lists_problems() -> None:
    with pytest.raises(SuiteError, match=r"(?s)2 problem\(s\).*line 1: prompt: missing"):
        parse_suite_jsonl(jsonl({"reference": "a"}, {"reference": "b"}), META)


def test_regex_validation_uses_suite_flags() -> None:
    meta = SuiteMeta(name="r", grader="regex", grader_options={"flags": "x"})
    # In verbose mode "#" starts a comment, so this pattern is still valid.
    suite = parse_suite_jsonl(jsonl({"prompt": "q", "reference": r"a \d+  # digits"}), meta)
    assert suite.items[0].grader == "regex"


# --------------------------------------------------------------------------- metadata


@pytest.mark.parametrize(
    "kwargs",
    [
        {"name": "Bad Name"},
        {"name": ""},
        {"name": "x" * 65},
        {"name": "ok", "grader": "fuzzy"},
        {"name": "ok", "tolerance": -1},
        {"name": "ok", "min_score": 101},
        {"name": "ok", "grader_options": {"abs_tol": -0.1}},
        {"name": "ok", "grader_options": {"unknown": 1}},
        {"name": "ok", "extra_field": 1},
    ],
)
def test_suite_meta_rejects_invalid_metadata(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        SuiteMeta(**kwargs)


def test_decoding_config_bounds_and_consistency() -> None:
    assert DecodingConfig() == DecodingConfig(greedy=True, max_new_tokens=256, temperature=0.0)
    DecodingConfig(greedy=False, temperature=0.7, max_new_tokens=4096)
    for bad in (
        {"max_new_tokens": 0},
        {"max_new_tokens": 4097},
        {"greedy": True, "temperature": 0.5},
        {"greedy": False, "temperature": 0.0},
    ):
        with pytest.raises(ValidationError):
            DecodingConfig(**bad)


# --------------------------------------------------------------------------- hashing


BASE_ROWS: list[dict[str, Any]] = [
    {"prompt": "q1", "reference": "a1", "id": "one"},
    {"prompt": "q2", "reference": ["a2", "b2"]},
]


def test_sha_is_stable_for_same_content() -> None:
    first = parse_suite_jsonl(jsonl(*BASE_ROWS), META)
    again = parse_suite_jsonl(jsonl(*BASE_ROWS), SuiteMeta(name="science.v1"))
    assert first.sha256 == again.sha256
    assert len(first.sha256) == 64
    # JSON formatting (spacing, key order, trailing newline) does not change the content.
    reformatted = "\n".join(
        json.dumps(row, indent=None, separators=(", ", " : "), sort_keys=True) for row in BASE_ROWS
    )
    assert parse_suite_jsonl(reformatted + "\n", META).sha256 == first.sha256


def test_sha_changes_with_any_content() -> None:
    base = parse_suite_jsonl(jsonl(*BASE_ROWS), META).sha256
    changed_reference = [BASE_ROWS[0], {**BASE_ROWS[1], "reference": ["a2"]}]
    changed_prompt = [{**BASE_ROWS[0], "prompt": "q1 "}, BASE_ROWS[1]]
    reordered = [BASE_ROWS[1], BASE_ROWS[0]]
    variants = [
        parse_suite_jsonl(jsonl(*changed_reference), META).sha256,
        parse_suite_jsonl(jsonl(*changed_prompt), META).sha256,
        parse_suite_jsonl(jsonl(*reordered), META).sha256,
        parse_suite_jsonl(jsonl(*BASE_ROWS), SuiteMeta(name="science.v1", tolerance=3.0)).sha256,
        parse_suite_jsonl(jsonl(*BASE_ROWS), SuiteMeta(name="science.v2")).sha256,
        parse_suite_jsonl(
            jsonl(*BASE_ROWS), SuiteMeta(name="science.v1", decoding=DecodingConfig(max_new_tokens=512))
        ).sha256,
    ]
    assert base not in variants
    assert len(set(variants)) == len(variants)


def test_blank_lines_change_generated_ids_and_therefore_the_sha() -> None:
    # Generated ids come from line numbers; give explicit ids if the file layout may change.
    compact = parse_suite_jsonl(jsonl(*BASE_ROWS), META)
    spaced = parse_suite_jsonl(jsonl(BASE_ROWS[0], "", BASE_ROWS[1]), META)
    assert spaced.items[1].item_id == "row-3"
    assert compact.sha256 != spaced.sha256


# --------------------------------------------------------------------------- prompt lengths


def test_check_prompt_lengths_uses_injected_counter() -> None:
    suite = parse_suite_jsonl(
        jsonl(
            {"prompt": "short one", "reference": "a"},
            {"prompt": "this prompt has many more words than allowed", "reference": "a"},
            {
                "prompt": [
                    {"role": "system", "content": "one two three"},
                    {"role": "user", "content": "four"},
                ],
                "reference": "a",
            },
        ),
        META,
    )
    seen: list[list[dict[str, str]]] = []

    def count_words(messages: list[dict[str, str]]) -> int:
        seen.append(messages)
        return sum(len(message["content"].split()) for message in messages)

    problems = check_prompt_lengths(suite, count_words, max_tokens=4)
    assert [(p.line, p.field) for p in problems] == [(2, "prompt")]
    assert "8 tokens" in problems[0].reason
    assert seen[2][0] == {"role": "system", "content": "one two three"}
