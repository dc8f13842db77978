"""Regression suites: metadata plus graded items, parsed from JSONL with every problem reported at once.

A row is `{"prompt": str | messages, "reference": str | [str], "grader"?: str, "options"?: [str],
"id"?: str}`. `messages` is a list of {"role": "system"|"user"|"assistant", "content": str} that
ends with a user turn. Structured references are accepted where a grader reads JSON: a JSON value
for json_match, a list of golden-action objects for tool_call, a JSON number for numeric; they are
stored as JSON text so every item's references are strings.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import regex
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from app.contracts.problems import Problems, RowProblem, decode_json_row, summary
from app.evaluation.graders import (
    KNOWN_GRADERS,
    compile_reference_regex,
    normalize_text,
    parse_number,
    parse_tool_call_reference,
    tool_call_reference_from_golden,
    unknown_grader,
    validate_grader_options,
)

ROW_KEYS = frozenset({"prompt", "reference", "grader", "options", "id"})
MESSAGE_ROLES = ("system", "user", "assistant")
MessageDict = dict[str, str]


# --------------------------------------------------------------------------- metadata


class DecodingConfig(BaseModel):
    """How the suite's prompts are generated; part of the suite's identity (and its sha)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    greedy: bool = True
    max_new_tokens: int = Field(default=256, ge=1, le=4096)
    temperature: float = Field(default=0.0, ge=0.0, le=10.0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _temperature_matches_mode(self) -> DecodingConfig:
        # A greedy suite with a temperature would be recorded with settings it never used.
        if self.greedy and self.temperature != 0:
            raise ValueError("greedy decoding ignores temperature; set temperature to 0")
        if not self.greedy and self.temperature == 0:
            raise ValueError("sampled decoding needs temperature > 0 (or set greedy=true)")
        return self


class SuiteMeta(BaseModel):
    """Suite metadata: name, default grader for its rows, decoding, and the gate's tolerances."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9._-]{1,64}$")
    grader: str = "exact_match"
    decoding: DecodingConfig = Field(default_factory=DecodingConfig)
    # Largest drop, in points (0..100), this suite may suffer before the gate rejects.
    # Capped at the whole scale: a larger tolerance would let any candidate pass.
    tolerance: float = Field(default=2.0, ge=0.0, le=100.0, allow_inf_nan=False)
    # Floor, in points, the new skill's suite must reach; None means no floor.
    min_score: float | None = Field(default=None, ge=0.0, le=100.0, allow_inf_nan=False)
    # e.g. {"abs_tol": 0.01, "rel_tol": 0.0} for numeric, {"flags": "i"} for regex.
    grader_options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("grader")
    @classmethod
    def _known_grader(cls, grader: str) -> str:
        if grader not in KNOWN_GRADERS:
            raise ValueError(unknown_grader(grader))
        return grader

    @field_validator("grader_options")
    @classmethod
    def _valid_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        problems = validate_grader_options(options)
        if problems:
            raise ValueError("; ".join(problems))
        return options


# --------------------------------------------------------------------------- items


@dataclass(frozen=True)
class ChatMessage:
    role: Literal["system", "user", "assistant"]
    content: str


@dataclass(frozen=True)
class SuiteItem:
    """One graded prompt. references are alternatives (any may match); options are the choice
    grader's candidate answers (None for other graders)."""

    item_id: str
    line: int
    prompt: str | tuple[ChatMessage, ...]
    references: tuple[str, ...]
    grader: str
    options: tuple[str, ...] | None = None

    def messages(self) -> list[MessageDict]:
        """The prompt as chat messages (a plain-string prompt is a single user turn)."""
        if isinstance(self.prompt, str):
            return [{"role": "user", "content": self.prompt}]
        return [{"role": message.role, "content": message.content} for message in self.prompt]

    @property
    def reference_index(self) -> int:
        """Index of the correct option (choice grader only)."""
        if self.options is None:
            raise ValueError(f"item {self.item_id!r} has no options")
        return self.options.index(self.references[0])

    def canonical(self) -> dict[str, Any]:
        """Content that defines the item. The line number is left out, but an id generated from it
        ("row-3") is in: with generated ids a blank line changes the sha, with explicit ids it does not."""
        prompt: str | list[MessageDict] = self.prompt if isinstance(self.prompt, str) else self.messages()
        return {
            "id": self.item_id,
            "prompt": prompt,
            "references": list(self.references),
            "grader": self.grader,
            "options": None if self.options is None else list(self.options),
        }


def _canonical_sha256(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class EvalSuite:
    """A suite as evaluation sees it: metadata and parsed items (the stored row is app.suites' Suite)."""

    meta: SuiteMeta
    items: tuple[SuiteItem, ...]

    @cached_property
    def sha256(self) -> str:
        """sha256 of canonical JSON of (meta, items): the same content, the same sha (see canonical())."""
        return _canonical_sha256(
            {"meta": self.meta.model_dump(mode="json"), "items": [item.canonical() for item in self.items]}
        )

    def __len__(self) -> int:
        return len(self.items)


# --------------------------------------------------------------------------- problems


class SuiteError(ValueError):
    """Raised with every problem found in a suite (the first MAX_LISTED_PROBLEMS listed), so users can
    fix them all in one pass."""

    def __init__(self, problems: list[RowProblem], total: int | None = None) -> None:
        self.problems = problems
        self.total = len(problems) if total is None else total
        super().__init__(summary(problems, self.total, "suite", 20))


# --------------------------------------------------------------------------- row parsing


class _RowChecker:
    """Collects the problems of one row while building its item."""

    def __init__(self, line: int, problems: Problems) -> None:
        self.line = line
        self.problems = problems
        self.ok = True

    def fail(self, field: str, reason: str) -> None:
        self.problems.add(RowProblem(self.line, field, reason))
        self.ok = False


def _parse_messages(raw: list[Any], check: _RowChecker) -> tuple[ChatMessage, ...]:
    if not raw:
        check.fail("prompt", "message list is empty")
        return ()
    messages: list[ChatMessage] = []
    for index, entry in enumerate(raw):
        field = f"prompt[{index}]"
        if not isinstance(entry, dict):
            check.fail(field, f"message must be an object, got {type(entry).__name__}")
            continue
        for key in sorted(set(entry) - {"role", "content"}):
            check.fail(f"{field}.{key}", "unknown message key (allowed: role, content)")
        role, content = entry.get("role"), entry.get("content")
        if role not in MESSAGE_ROLES:
            check.fail(f"{field}.role", f"role must be one of {', '.join(MESSAGE_ROLES)}, got {role!r}")
        elif role == "system" and index != 0:
            check.fail(f"{field}.role", "a system message may only be the first message")
        if not isinstance(content, str) or not content.strip():
            check.fail(f"{field}.content", "content must be a non-empty string")
        if role in MESSAGE_ROLES and isinstance(content, str):
            messages.append(ChatMessage(role=role, content=content))
    last_role = raw[-1].get("role") if isinstance(raw[-1], dict) else None
    if last_role != "user":
        check.fail(f"prompt[{len(raw) - 1}].role", f"the last message must be a user turn, got {last_role!r}")
    return tuple(messages)


def _parse_prompt(row: dict[str, Any], check: _RowChecker) -> str | tuple[ChatMessage, ...]:
    if "prompt" not in row:
        check.fail("prompt", "missing")
        return ""
    raw = row["prompt"]
    if isinstance(raw, str):
        if not raw.strip():
            check.fail("prompt", "prompt is empty")
        return raw
    if isinstance(raw, list):
        return _parse_messages(raw, check)
    check.fail("prompt", f"must be a string or a list of messages, got {type(raw).__name__}")
    return ""


def _reference_texts(raw: Any, grader: str | None, check: _RowChecker) -> list[tuple[str, str]]:
    """(field, text) per reference. A string or a list of strings gives alternatives; any other JSON
    value is one structured reference (json_match value, tool_call golden actions, numeric number)
    and is stored as JSON text."""
    if isinstance(raw, str):
        entries = [("reference", raw)]
    elif isinstance(raw, list) and not raw:
        check.fail("reference", "reference list is empty")
        return []
    elif isinstance(raw, list) and all(isinstance(value, str) for value in raw):
        entries = [(f"reference[{index}]", value) for index, value in enumerate(raw)]
    elif grader == "tool_call" and isinstance(raw, list):
        try:
            return [("reference", tool_call_reference_from_golden(raw))]
        except ValueError as error:
            check.fail("reference", f"golden actions do not parse: {error}")
            return []
    elif grader == "json_match":
        return [("reference", json.dumps(raw, sort_keys=True, ensure_ascii=False))]
    elif grader == "numeric" and isinstance(raw, int | float) and not isinstance(raw, bool):
        return [("reference", repr(raw))]
    else:
        check.fail("reference", f"must be a string or a list of strings, got {type(raw).__name__}")
        return []
    texts: list[tuple[str, str]] = []
    for field, text in entries:
        if text.strip():
            texts.append((field, text))
        else:
            check.fail(field, "reference is empty")
    return texts


def _check_reference(field: str, text: str, grader: str, meta: SuiteMeta, check: _RowChecker) -> None:
    if grader == "regex":
        try:
            compile_reference_regex(text, meta.grader_options)
        except regex.error as error:
            check.fail(field, f"invalid regex: {error}")
    elif grader == "exact_match":
        if not normalize_text(text):
            check.fail(
                field, "reference is only punctuation, which the grader strips: an empty answer matches it"
            )
    elif grader == "json_match":
        try:
            json.loads(text)
        except ValueError as error:
            check.fail(field, f"not valid JSON: {error}")
    elif grader == "numeric":
        if parse_number(text) is None:
            check.fail(field, f"not a number: {text!r}")
    elif grader == "tool_call":
        try:
            parse_tool_call_reference(text)
        except ValueError as error:
            check.fail(field, f"does not parse into tool actions: {error}")


def _parse_options(
    row: dict[str, Any], grader: str | None, references: list[str], check: _RowChecker
) -> tuple[str, ...] | None:
    raw = row.get("options")
    if grader != "choice":
        if "options" in row and grader is not None:
            check.fail("options", f"options only apply to the choice grader, not {grader}")
        return None
    if not isinstance(raw, list) or len(raw) < 2:
        check.fail("options", "the choice grader needs a list of at least 2 options")
        return None
    if not all(isinstance(option, str) and option.strip() for option in raw):
        check.fail("options", "every option must be a non-empty string")
        return None
    if len(set(raw)) != len(raw):
        check.fail("options", "options must be distinct")
    options = tuple(raw)
    # An empty reference list was already reported by the reference checks.
    if len(references) > 1:
        check.fail("reference", "the choice grader needs exactly one reference (the correct option)")
    elif references and references[0] not in options:
        check.fail("reference", f"reference {references[0]!r} is not one of the options")
    return options


def _parse_row(row: dict[str, Any], line: int, meta: SuiteMeta, problems: Problems) -> SuiteItem | None:
    check = _RowChecker(line, problems)
    for key in sorted(set(row) - ROW_KEYS):
        check.fail(key, f"unknown key (allowed: {', '.join(sorted(ROW_KEYS))})")

    item_id = f"row-{line}"
    if "id" in row:
        raw_id = row["id"]
        if isinstance(raw_id, str) and raw_id.strip():
            item_id = raw_id
        else:
            check.fail("id", "id must be a non-empty string")

    grader: str | None = meta.grader
    if "grader" in row:
        raw_grader = row["grader"]
        if isinstance(raw_grader, str) and raw_grader in KNOWN_GRADERS:
            grader = raw_grader
        else:
            check.fail("grader", unknown_grader(raw_grader))
            grader = None  # grader-specific checks would only add noise

    prompt = _parse_prompt(row, check)

    references: list[str] = []
    if "reference" not in row:
        check.fail("reference", "missing")
    else:
        for field, text in _reference_texts(row["reference"], grader, check):
            if grader is not None:
                _check_reference(field, text, grader, meta, check)
            references.append(text)

    options = _parse_options(row, grader, references, check)
    if not check.ok or grader is None:
        return None
    return SuiteItem(
        item_id=item_id,
        line=line,
        prompt=prompt,
        references=tuple(references),
        grader=grader,
        options=options,
    )


# --------------------------------------------------------------------------- public API


def parse_suite_jsonl(text: str, meta: SuiteMeta) -> EvalSuite:
    """Parse and validate a JSONL suite; raises SuiteError listing every problem found.

    Blank lines are skipped but still counted, so reported line numbers match the file.
    """
    problems = Problems()
    items: list[SuiteItem] = []
    first_line_of_id: dict[str, int] = {}
    saw_row = False
    # split("\n") rather than splitlines(): JSON strings may legally hold U+2028 and friends.
    for line, raw_line in enumerate(text.removeprefix("\ufeff").split("\n"), start=1):
        stripped = raw_line.strip()
        if not stripped:
            continue
        saw_row = True
        row, problem = decode_json_row(line, stripped)
        if problem is not None:
            problems.add(problem)
            continue
        if not isinstance(row, dict):
            problems.add(RowProblem(line, "row", f"must be a JSON object, got {type(row).__name__}"))
            continue
        item = _parse_row(row, line, meta, problems)
        if item is None:
            continue
        if item.item_id in first_line_of_id:
            where = first_line_of_id[item.item_id]
            problems.add(
                RowProblem(line, "id", f"duplicate item id {item.item_id!r} (first on line {where})")
            )
            continue
        first_line_of_id[item.item_id] = line
        items.append(item)
    if not saw_row:
        problems.add(RowProblem(None, "suite", "suite has no items"))
    if problems:
        raise SuiteError(problems.listed, problems.total)
    return EvalSuite(meta=meta, items=tuple(items))


def load_suite_file(path: str | Path, meta: SuiteMeta) -> EvalSuite:
    """Read a UTF-8 JSONL file and parse it with parse_suite_jsonl."""
    return parse_suite_jsonl(Path(path).read_text(encoding="utf-8"), meta)


def check_prompt_lengths(
    suite: EvalSuite, count_tokens: Callable[[list[MessageDict]], int], max_tokens: int
) -> list[RowProblem]:
    """Items whose prompt is longer than max_tokens, as counted by the caller's tokenizer.

    count_tokens receives the prompt as chat messages. To leave room for generation, pass the
    model's context length minus suite.meta.decoding.max_new_tokens as max_tokens.
    """
    problems: list[RowProblem] = []
    for item in suite.items:
        tokens = count_tokens(item.messages())
        if tokens > max_tokens:
            problems.append(
                RowProblem(item.line, "prompt", f"prompt is {tokens} tokens; the limit is {max_tokens}")
            )
    return problems
