from __future__ import annotations

import json

import pytest

from app.contracts.demonstrations import DatasetError, parse_demonstrations


def test_both_row_shapes_parse() -> None:
    rows = parse_demonstrations(
        json.dumps(
            {
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Q1"},
                    {"role": "assistant", "content": "A1"},
                    {"role": "user", "content": "Q2"},
                    {"role": "assistant", "content": "A2"},
                ]
            }
        )
        + "\n\n"
        + json.dumps({"prompt": "Q3", "demonstration": "A3", "id": "x"})
        + "\n"
        + json.dumps({"prompt": [{"role": "user", "content": "Q4"}], "demonstration": "A4"})
    )
    assert [r.line for r in rows] == [1, 3, 4]
    first = rows[0]
    assert first.demonstration == "A2" and first.question == "Q2"
    assert [m.role for m in first.query] == ["system", "user", "assistant", "user"]
    assert rows[1].row_id == "x" and rows[2].row_id == "row-4"


BAD = [
    ("{not json", "row", "not valid JSON"),
    ("[1, 2]", "row", "must be a JSON object"),
    ('{"foo": 1}', "row", "needs either"),
    ('{"messages": [{"role": "user", "content": "q"}]}', "messages", "last message must be the assistant"),
    (
        '{"messages": [{"role": "robot", "content": "q"}, {"role": "assistant", "content": "a"}]}',
        "messages[0].role",
        "one of",
    ),
    (
        '{"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "a"}]}',
        "messages[0].content",
        "non-empty",
    ),
    ('{"messages": [{"role": "assistant", "content": "a"}]}', "messages", "must precede"),
    (
        '{"messages": [{"role": "user", "content": "q", "x": 1}, {"role": "assistant", "content": "a"}]}',
        "messages[0]",
        "unknown key",
    ),
    ('{"prompt": "q", "demonstration": ""}', "demonstration", "non-empty"),
    ('{"prompt": "q"}', "demonstration", "non-empty"),
    ('{"prompt": "q", "demonstration": "a", "extra": true}', "row", "unknown key"),
    (
        '{"prompt": [{"role": "user", "content": "q"}, {"role": "system", "content": "s"}], '
        '"demonstration": "a"}',
        "prompt[1].role",
        "only come first",
    ),
    (
        '{"prompt": [{"role": "assistant", "content": "q"}], "demonstration": "a"}',
        "prompt",
        "end with a user",
    ),
    ('{"prompt": "q", "demonstration": "a", "id": true}', "id", "string or an integer"),
    (
        '{"messages": [{"role": ["user"], "content": "q"}, {"role": "assistant", "content": "a"}]}',
        "messages[0].role",
        "one of",
    ),
    ('{"prompt": "q", "demonstration": "a", "id": ' + "1" * 5000 + "}", "row", "more than 4300 digits"),
    ('{"prompt": "q\\ud800", "demonstration": "a"}', "prompt", "lone UTF-16 surrogate"),
    (
        '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a\\u0000"}]}',
        "messages[1].content",
        "NUL",
    ),
    ('{"prompt": "q", "demonstration": "a", "id": NaN}', "id", "NaN"),
]


@pytest.mark.parametrize(("line", "field", "reason"), BAD)
def test_each_bad_row_is_named(line: str, field: str, reason: str) -> None:
    with pytest.raises(DatasetError) as info:
        parse_demonstrations('{"prompt": "fine", "demonstration": "fine"}\n' + line)
    [problem] = info.value.problems
    assert (problem.line, problem.field) == (2, field)
    assert reason in problem.reason


def test_every_problem_is_reported_at_once_and_nothing_is_returned() -> None:
    text = "\n".join(line for line, _, _ in BAD)
    with pytest.raises(DatasetError) as info:
        parse_demonstrations(text)
    assert [p.line for p in info.value.problems] == list(range(1, len(BAD) + 1))
    assert f"{len(BAD)} problem(s)" in str(info.value)


def test_empty_file_duplicate_ids_and_huge_rows() -> None:
    with pytest.raises(DatasetError, match="no rows") as empty:
        parse_demonstrations("\n\n")
    # A whole-file problem names its field once ("file: file: ..." before).
    assert [str(p) for p in empty.value.problems] == ["file: the dataset has no rows"]
    dup = '{"prompt": "q", "demonstration": "a", "id": 1}\n{"prompt": "q2", "demonstration": "b", "id": 1}'
    with pytest.raises(DatasetError, match="duplicate id"):
        parse_demonstrations(dup)
    huge = json.dumps({"prompt": "q", "demonstration": "x" * 300_000})
    with pytest.raises(DatasetError, match="longer than"):
        parse_demonstrations(huge)
