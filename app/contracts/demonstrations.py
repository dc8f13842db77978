"""Demonstration datasets: one query plus one expert answer per row.

Two JSONL row shapes are accepted:
- OpenAI chat fine-tuning: ``{"messages": [...]}``; the last assistant message is the
  demonstration, everything before it (system messages included) is the query.
- ``{"prompt": str | messages, "demonstration": str}``.

Parsing reports every bad row with its line number, field and reason, and returns nothing
when any row is bad: a dataset is accepted whole or not at all.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from app.contracts.problems import Problems, RowProblem, decode_json_row, summary

ROLES = frozenset({"system", "user", "assistant"})
MESSAGE_KEYS = frozenset({"role", "content"})
CHAT_ROW_KEYS = frozenset({"messages", "id"})
PROMPT_ROW_KEYS = frozenset({"prompt", "demonstration", "id"})
MAX_ROW_CHARS = 200_000


@dataclass(frozen=True)
class Message:
    role: str
    content: str

    def to_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True)
class Demonstration:
    """One training row: the query as chat messages (ending with a user turn) and the expert answer."""

    line: int
    query: tuple[Message, ...]
    demonstration: str
    row_id: str

    def query_dicts(self) -> list[dict[str, str]]:
        return [m.to_dict() for m in self.query]

    @property
    def question(self) -> str:
        return self.query[-1].content


class DatasetError(ValueError):
    """Every problem found in a dataset, reported together (the first MAX_LISTED_PROBLEMS listed)."""

    def __init__(self, problems: list[RowProblem], total: int | None = None) -> None:
        self.problems = problems
        self.total = len(problems) if total is None else total
        super().__init__(summary(problems, self.total, "the dataset", 50))


def parse_messages(value: Any, field: str, line: int, problems: list[RowProblem]) -> list[Message] | None:
    """Validate a chat message list; append problems and return None when it is bad."""
    if not isinstance(value, list) or not value:
        problems.append(RowProblem(line, field, "must be a non-empty list of {role, content} messages"))
        return None
    messages: list[Message] = []
    ok = True
    for i, raw in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(raw, dict):
            problems.append(RowProblem(line, where, "must be an object with role and content"))
            ok = False
            continue
        unknown = set(raw) - MESSAGE_KEYS
        if unknown:
            problems.append(RowProblem(line, where, f"unknown key(s): {', '.join(sorted(unknown))}"))
            ok = False
        role, content = raw.get("role"), raw.get("content")
        if not isinstance(role, str) or role not in ROLES:
            problems.append(
                RowProblem(line, f"{where}.role", f"must be one of {sorted(ROLES)}, got {role!r}")
            )
            ok = False
        if not isinstance(content, str) or not content.strip():
            problems.append(RowProblem(line, f"{where}.content", "must be a non-empty string"))
            ok = False
        if ok:
            messages.append(Message(str(role), str(content)))
    if not ok:
        return None
    for i, m in enumerate(messages):
        if m.role == "system" and i != 0:
            problems.append(RowProblem(line, f"{field}[{i}].role", "a system message may only come first"))
            return None
    return messages


def _query_problems(query: list[Message], field: str, line: int) -> list[RowProblem]:
    if query[-1].role != "user":
        return [RowProblem(line, field, "the query must end with a user message")]
    if all(m.role == "system" for m in query[:-1]) and query[-1].role == "user":
        return []
    # Multi-turn queries must alternate user/assistant after the optional system message.
    turns = [m for m in query if m.role != "system"]
    for i, m in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if m.role != expected:
            return [RowProblem(line, field, "user and assistant turns must alternate, starting with user")]
    return []


def parse_row(obj: Any, line: int) -> tuple[Demonstration | None, list[RowProblem]]:
    problems: list[RowProblem] = []
    if not isinstance(obj, dict):
        return None, [RowProblem(line, "row", "must be a JSON object")]
    row_id = obj.get("id", f"row-{line}")
    if not isinstance(row_id, str | int) or isinstance(row_id, bool):
        problems.append(RowProblem(line, "id", "must be a string or an integer"))
    if "messages" in obj:
        unknown = set(obj) - CHAT_ROW_KEYS
        if unknown:
            problems.append(RowProblem(line, "row", f"unknown key(s): {', '.join(sorted(unknown))}"))
        messages = parse_messages(obj["messages"], "messages", line, problems)
        if messages is None:
            return None, problems
        if messages[-1].role != "assistant":
            problems.append(
                RowProblem(line, "messages", "the last message must be the assistant demonstration")
            )
            return None, problems
        query, demonstration = messages[:-1], messages[-1].content
        if not query:
            problems.append(
                RowProblem(line, "messages", "a query (user message) must precede the demonstration")
            )
            return None, problems
        problems += _query_problems(query, "messages", line)
    elif "prompt" in obj or "demonstration" in obj:
        unknown = set(obj) - PROMPT_ROW_KEYS
        if unknown:
            problems.append(RowProblem(line, "row", f"unknown key(s): {', '.join(sorted(unknown))}"))
        prompt = obj.get("prompt")
        if isinstance(prompt, str):
            if not prompt.strip():
                problems.append(RowProblem(line, "prompt", "must be a non-empty string"))
                query = []
            else:
                query = [Message("user", prompt)]
        elif prompt is None:
            problems.append(RowProblem(line, "prompt", "is required"))
            query = []
        else:
            query = parse_messages(prompt, "prompt", line, problems) or []
            if query:
                problems += _query_problems(query, "prompt", line)
        raw_demonstration = obj.get("demonstration")
        if isinstance(raw_demonstration, str) and raw_demonstration.strip():
            demonstration = raw_demonstration
        else:
            problems.append(RowProblem(line, "demonstration", "must be a non-empty string"))
    else:
        return None, [RowProblem(line, "row", "needs either 'messages' or 'prompt' and 'demonstration'")]
    if problems:
        return None, problems
    return Demonstration(line, tuple(query), demonstration, str(row_id)), []


def parse_jsonl_objects(lines: Iterable[str], problems: Problems) -> list[tuple[int, Any]]:
    """Decode JSONL; blank lines are skipped but still counted, so line numbers match an editor's."""
    objects: list[tuple[int, Any]] = []
    for line_no, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        if len(text) > MAX_ROW_CHARS:
            problems.add(RowProblem(line_no, "row", f"longer than {MAX_ROW_CHARS} characters"))
            continue
        value, problem = decode_json_row(line_no, text)
        if problem is not None:
            problems.add(problem)
        else:
            objects.append((line_no, value))
    return objects


def parse_demonstrations(text: str) -> list[Demonstration]:
    """Parse a whole JSONL dataset, raising DatasetError with every problem when any row is bad."""
    problems = Problems()
    # split("\n") rather than splitlines(): JSON strings may legally hold U+2028, U+0085 and friends.
    objects = parse_jsonl_objects(text.removeprefix("\ufeff").split("\n"), problems)
    rows: list[Demonstration] = []
    for line, obj in objects:
        row, row_problems = parse_row(obj, line)
        problems.extend(row_problems)
        if row is not None:
            rows.append(row)
    if not objects and not problems:
        problems.add(RowProblem(None, "file", "the dataset has no rows"))
    seen: dict[str, int] = {}
    for row in rows:
        if row.row_id in seen:
            problems.add(
                RowProblem(row.line, "id", f"duplicate id {row.row_id!r} (first on line {seen[row.row_id]})")
            )
        seen.setdefault(row.row_id, row.line)
    if problems:
        raise DatasetError(problems.sorted(), problems.total)
    return rows


def load_demonstrations(path: str) -> list[Demonstration]:
    with open(path, encoding="utf-8") as f:
        return parse_demonstrations(f.read())
