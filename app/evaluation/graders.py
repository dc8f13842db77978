"""Deterministic graders: each maps (model output, reference(s), options) to 1.0 (pass) or 0.0 (fail).

Every grader accepts several references and passes if *any* of them matches. All functions are
pure: the same arguments always give the same score, so cached results stay valid.
"""

from __future__ import annotations

import json
import math
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import regex

GraderFn = Callable[[str, Sequence[Any], Mapping[str, Any]], float]
Reference = str | Sequence[str]

DEFAULT_ABS_TOL = 1e-6
DEFAULT_REL_TOL = 0.0

# Letters accepted in the regex grader's "flags" option, as the `regex` module's own flags: its
# values differ from `re`'s (re.ASCII has the value of regex.VERSION1).
REGEX_FLAG_LETTERS: Mapping[str, int] = MappingProxyType(
    {"a": regex.ASCII, "i": regex.IGNORECASE, "m": regex.MULTILINE, "s": regex.DOTALL, "x": regex.VERBOSE}
)
# Compiling a counted repeat costs time and memory in proportion to its count ("a{10000000}" takes
# seconds and gigabytes), and the API compiles every uploaded pattern: bound both before compiling.
MAX_REGEX_CHARS = 2000
MAX_REGEX_EXPANSION = 10_000
KNOWN_GRADER_OPTIONS = frozenset({"abs_tol", "rel_tol", "flags"})


# --------------------------------------------------------------------------- options


def validate_grader_options(options: Mapping[str, Any]) -> list[str]:
    """Problems with a grader-options dict (empty list when valid); unknown keys are typos, not extras."""
    problems: list[str] = []
    for key in sorted(set(options) - KNOWN_GRADER_OPTIONS):
        problems.append(f"unknown grader option {key!r} (known: {', '.join(sorted(KNOWN_GRADER_OPTIONS))})")
    for key in ("abs_tol", "rel_tol"):
        if key in options:
            value = options[key]
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value < 0
            ):
                problems.append(f"{key} must be a finite number >= 0, got {value!r}")
    if "flags" in options:
        flags = options["flags"]
        if not isinstance(flags, str) or any(letter not in REGEX_FLAG_LETTERS for letter in flags):
            problems.append(
                f"flags must be a string of letters from {''.join(REGEX_FLAG_LETTERS)!r}, got {flags!r}"
            )
    return problems


def regex_flags(options: Mapping[str, Any]) -> int:
    """regex flags from options["flags"] (letters a/i/m/s/x); none by default: matching is case-sensitive."""
    flags = 0
    for letter in options.get("flags", ""):
        if letter not in REGEX_FLAG_LETTERS:
            raise ValueError(f"unknown regex flag letter {letter!r}")
        flags |= REGEX_FLAG_LETTERS[letter]
    return flags


def _repeat_counts(pattern: str) -> list[int]:
    """The lower bound of every counted repeat ("{m}", "{m,}", "{m,n}") written in pattern; digits may
    be spaced out ("{1 0 0}"), as the `regex` module reads them in verbose mode."""
    counts = re.findall(r"\{([\d\s]+)(?:,[\d\s]*)?\}", pattern)
    return [int(digits) for low in counts if (digits := "".join(low.split()))]


def _expansion(items: Any) -> int:
    """How many pattern nodes compiling items makes: counted repeats multiply what they repeat."""
    total = 0
    for op, value in items:
        name = str(op)
        if name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            low, _, inner = value
            total += max(low, 1) * _expansion(inner)
        elif name == "SUBPATTERN":
            total += _expansion(value[3])
        elif name == "BRANCH":
            total += sum(_expansion(branch) for branch in value[1])
        elif name in ("ASSERT", "ASSERT_NOT"):
            total += _expansion(value[1])
        elif name == "ATOM_GROUP":
            total += _expansion(value)
        elif name == "GROUPREF_EXISTS":
            total += sum(_expansion(branch) for branch in value[1:] if branch is not None)
        else:
            total += 1
    return total


def regex_expansion(pattern: str, flags: int) -> int:
    """The size compiling pattern expands to. Patterns the standard parser reads are measured from
    their repeat tree; for the `regex` module's own syntax (\\p{L}, fuzzy matching) every counted
    repeat is taken as nested in every other."""
    every_count_nested = math.prod(max(count, 1) for count in _repeat_counts(pattern))
    try:
        # re's parser is private but stable; it gives the repeat tree the `regex` module also builds.
        from re import _parser  # type: ignore[attr-defined]

        tree = _expansion(_parser.parse(pattern, re.VERBOSE if flags & regex.VERBOSE else 0))
    except (re.error, RecursionError, OverflowError):
        return every_count_nested
    # In verbose mode `re` reads "{1 0 0}" as text where `regex` reads a count: take the larger.
    return max(tree, every_count_nested) if flags & regex.VERBOSE else tree


def compile_reference_regex(pattern: str, options: Mapping[str, Any]) -> Any:
    """Compile a regex reference the way the regex grader will; raises regex.error when invalid or
    too large to compile safely."""
    flags = regex_flags(options)
    if len(pattern) > MAX_REGEX_CHARS:
        raise regex.error(f"the pattern is {len(pattern)} characters; at most {MAX_REGEX_CHARS} are allowed")
    if regex_expansion(pattern, flags) > MAX_REGEX_EXPANSION:
        raise regex.error(
            f"the pattern's counted repeats expand to more than {MAX_REGEX_EXPANSION:,} nodes "
            "(e.g. a{100000}); use an open repeat such as a+ or a smaller count"
        )
    try:
        return regex.compile(pattern, flags)
    except RecursionError:
        raise regex.error("the pattern nests too deeply") from None


def _tolerance(options: Mapping[str, Any], key: str, default: float) -> float:
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"{key} must be a number >= 0, got {value!r}")
    return float(value)


def _string_references(references: Sequence[Any]) -> list[str]:
    if not references:
        raise ValueError("at least one reference is required")
    if not all(isinstance(reference, str) for reference in references):
        raise ValueError("references must be strings for this grader")
    return list(references)


# --------------------------------------------------------------------------- exact_match / contains


def _is_edge_punctuation(char: str) -> bool:
    return char in string.punctuation or unicodedata.category(char).startswith("P")


# A sign or decimal point that starts a number is part of the answer ("-5" is not "5").
_NUMBER_START = re.compile(r"[-+]?\.?\d")


# Fullwidth ASCII (U+FF01..U+FF5E) to ASCII.
_FULLWIDTH = {code: code - 0xFEE0 for code in range(0xFF01, 0xFF5F)}


def normalize_text(text: str) -> str:
    """NFC-normalise, fold fullwidth forms, casefold, collapse whitespace runs to one space, strip
    punctuation at both ends.

    The same text typed differently compares equal (a decomposed "é", fullwidth "４２"); NFKC is not
    used, since it also makes "2³" equal "23" and "H₂O" equal "H2O".
    A leading "-", "+" or "." that begins a number is kept, so "-5" and ".5" keep their meaning.
    """
    composed = unicodedata.normalize("NFC", text).translate(_FULLWIDTH)
    collapsed = " ".join(composed.casefold().split())
    start, end = 0, len(collapsed)
    while start < end:
        char = collapsed[start]
        if char.isspace() or (_is_edge_punctuation(char) and not _NUMBER_START.match(collapsed, start)):
            start += 1
        else:
            break
    while end > start and (collapsed[end - 1].isspace() or _is_edge_punctuation(collapsed[end - 1])):
        end -= 1
    return collapsed[start:end]


def grade_exact_match(output: str, references: Sequence[Any], options: Mapping[str, Any]) -> float:
    """1.0 iff normalize_text(output) equals normalize_text(reference) for some reference."""
    answer = normalize_text(output)
    return float(any(answer == normalize_text(ref) for ref in _string_references(references)))


def _contains_pattern(reference: str) -> re.Pattern[str] | None:
    words = reference.casefold().split()
    if not words:
        return None
    body = r"\s+".join(re.escape(word) for word in words)
    # Lookarounds rather than \b so that references starting/ending in punctuation ("C++", ".NET")
    # still need a non-word neighbour, and "cat" never matches inside "concatenate".
    return re.compile(rf"(?<!\w){body}(?!\w)")


def grade_contains(output: str, references: Sequence[Any], options: Mapping[str, Any]) -> float:
    """1.0 iff some reference occurs in the output as whole words (case-insensitive, any whitespace)."""
    haystack = output.casefold()
    for reference in _string_references(references):
        pattern = _contains_pattern(reference)
        if pattern is not None and pattern.search(haystack):
            return 1.0
    return 0.0


# --------------------------------------------------------------------------- regex


# A suite's pattern is the uploader's code running on the worker: a catastrophic one ("(a+)+$") must not
# stall a job for hours. The `regex` engine takes a timeout where `re` takes none.
REGEX_TIMEOUT_SECONDS = 1.0


def grade_regex(output: str, references: Sequence[Any], options: Mapping[str, Any]) -> float:
    """1.0 iff a reference pattern is found in the output (flags from options["flags"]); a pattern that
    runs past REGEX_TIMEOUT_SECONDS raises ValueError, which fails that item with the reason."""
    for pattern in _string_references(references):
        try:
            compiled = compile_reference_regex(pattern, options)
        except regex.error as error:
            raise ValueError(f"the reference pattern {pattern[:60]!r} cannot be used: {error}") from None
        try:
            if compiled.search(output, timeout=REGEX_TIMEOUT_SECONDS):
                return 1.0
        except TimeoutError:
            raise ValueError(
                f"the reference pattern {pattern[:60]!r} ran longer than {REGEX_TIMEOUT_SECONDS:g} s on this "
                "output (catastrophic backtracking?)"
            ) from None
    return 0.0


# --------------------------------------------------------------------------- numeric

_NUMBER_BODY = r"""
    [-+\u2212]?                                 # optional sign (ASCII or Unicode minus)
    (?:
        \d{1,3}(?:,\d{3})+(?!\d)(?:\.\d+)?      # thousands separators: 1,234,567.89
      | \d+(?:\.\d+)?                           # 1234 or 12.5
      | \.\d+                                   # .5
    )
    (?:[eE][-+]?\d+)?                           # scientific notation
"""
# Not glued to a preceding word or number ("H2O", "v1.2" do not start a number at the digit).
_FIRST_NUMBER = re.compile(r"(?<![\w.])" + _NUMBER_BODY, re.VERBOSE)
_WHOLE_NUMBER = re.compile(_NUMBER_BODY, re.VERBOSE)


def _number_to_float(text: str) -> float:
    return float(text.replace(",", "").replace("\u2212", "-"))


def parse_number(text: str) -> float | None:
    """The value of text if it is exactly one number (same forms the numeric grader reads), else None."""
    stripped = text.strip()
    if not _WHOLE_NUMBER.fullmatch(stripped):
        return None
    return _number_to_float(stripped)


def first_number(text: str) -> float | None:
    """The first number written in text: "-3", "1,234.5", "6.02e23", ".5"; None when there is none."""
    match = _FIRST_NUMBER.search(text)
    return None if match is None else _number_to_float(match.group(0))


def grade_numeric(output: str, references: Sequence[Any], options: Mapping[str, Any]) -> float:
    """1.0 iff the first number in the output is within abs_tol, or within rel_tol·|ref|, of a reference.

    abs_tol defaults to 1e-6 and rel_tol to 0. A reference that is not a number raises ValueError.
    """
    abs_tol = _tolerance(options, "abs_tol", DEFAULT_ABS_TOL)
    rel_tol = _tolerance(options, "rel_tol", DEFAULT_REL_TOL)
    answer = first_number(output)
    for reference in _string_references(references):
        expected = parse_number(reference)
        if expected is None:
            raise ValueError(f"numeric reference is not a number: {reference!r}")
        if answer is None:
            continue
        error = abs(answer - expected)
        if error <= abs_tol or error <= rel_tol * abs(expected):
            return 1.0
    return 0.0


# --------------------------------------------------------------------------- json_match


def json_equal(left: Any, right: Any) -> bool:
    """Structural JSON equality: key order ignored, list order kept, true is not 1, 1 equals 1.0."""
    if isinstance(left, bool) or isinstance(right, bool):
        return type(left) is type(right) and left == right
    if isinstance(left, int | float) and isinstance(right, int | float):
        return left == right
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(json_equal(left[key], right[key]) for key in left)
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(json_equal(a, b) for a, b in zip(left, right, strict=True))
    if left is None or right is None:
        return left is None and right is None
    if isinstance(left, str) and isinstance(right, str):
        return left == right
    return False


_FENCED_BLOCK = re.compile(r"```[A-Za-z0-9_-]*[ \t]*\n(.*?)```", re.DOTALL)
_DECODER = json.JSONDecoder()


@dataclass(frozen=True)
class _Found:
    value: Any


def _loads(text: str) -> _Found | None:
    try:
        return _Found(json.loads(text))
    except (ValueError, RecursionError):  # nesting deeper than the parser goes is not an answer
        return None


def extract_json(text: str) -> tuple[bool, Any]:
    """(found, value): the whole text as JSON, else the first parsable ``` fenced block, else the
    first JSON object/array that starts at a "{" or "[" in the text (trailing prose is ignored)."""
    whole = _loads(text.strip())
    if whole is not None:
        return True, whole.value
    for block in _FENCED_BLOCK.finditer(text):
        fenced = _loads(block.group(1).strip())
        if fenced is not None:
            return True, fenced.value
    for index, char in enumerate(text):
        if char in "{[":
            try:
                value, _ = _DECODER.raw_decode(text, index)
            except (ValueError, RecursionError):
                continue
            return True, value
    return False, None


def _json_reference_value(reference: Any) -> Any:
    if isinstance(reference, str):
        try:
            return json.loads(reference)
        except ValueError as error:
            raise ValueError(f"json_match reference is not valid JSON: {error}") from error
    return reference


def grade_json_match(output: str, references: Sequence[Any], options: Mapping[str, Any]) -> float:
    """1.0 iff the JSON found in the output (see extract_json) equals a reference (JSON text or value)."""
    if not references:
        raise ValueError("at least one reference is required")
    expected_values = [_json_reference_value(reference) for reference in references]
    found, value = extract_json(output)
    return float(found and any(json_equal(value, expected) for expected in expected_values))


# --------------------------------------------------------------------------- tool_call


@dataclass(frozen=True)
class ToolAction:
    """One golden tool call: action name and its JSON-object input."""

    name: str
    arguments: Mapping[str, Any]


def _action_input_object(raw: Any) -> dict[str, Any]:
    value = json.loads(raw) if isinstance(raw, str) else raw
    if not isinstance(value, dict):
        raise ValueError(f"action_input must be a JSON object, got {type(value).__name__}")
    return value


def parse_golden_actions(golden_actions: Any) -> tuple[ToolAction, ...]:
    """Validate a golden-actions list [{"action": name, "action_input": JSON text or object}, ...]."""
    if not isinstance(golden_actions, list) or not golden_actions:
        raise ValueError("golden actions must be a non-empty JSON list")
    actions: list[ToolAction] = []
    for position, entry in enumerate(golden_actions):
        if not isinstance(entry, dict) or set(entry) != {"action", "action_input"}:
            raise ValueError(f"golden action {position} must be an object with keys action, action_input")
        name = entry["action"]
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"golden action {position} has an empty or non-string action name")
        try:
            arguments = _action_input_object(entry["action_input"])
        except ValueError as error:
            raise ValueError(f"golden action {position} has an invalid action_input: {error}") from error
        actions.append(ToolAction(name=name.strip(), arguments=arguments))
    return tuple(actions)


def parse_tool_call_reference(reference: str) -> tuple[ToolAction, ...]:
    """Parse a tool_call reference (JSON text of a golden-actions list); raises ValueError if invalid."""
    try:
        decoded = json.loads(reference)
    except ValueError as error:
        raise ValueError(f"tool_call reference is not valid JSON: {error}") from error
    return parse_golden_actions(decoded)


def tool_call_reference_from_golden(golden_actions: Sequence[Mapping[str, Any]]) -> str:
    """Canonical tool_call reference text from ToolAlpaca-style golden actions (inputs as objects)."""
    actions = parse_golden_actions([dict(e) if isinstance(e, Mapping) else e for e in golden_actions])
    return json.dumps(
        [{"action": action.name, "action_input": dict(action.arguments)} for action in actions],
        sort_keys=True,
        ensure_ascii=False,
    )


def merged_arguments(actions: Sequence[ToolAction]) -> dict[str, Any]:
    """dict.update over every action's input, in order (later keys win), as the SDFT grader merges."""
    merged: dict[str, Any] = {}
    for action in actions:
        merged.update(action.arguments)
    return merged


_REACT_MARKER = re.compile(
    r"^[ \t]*(?P<kind>Action[ \t]*Input|Action|Observation|Final[ \t]*Answer|Thought)[ \t]*:",
    re.MULTILINE | re.IGNORECASE,
)
_NAME_DECORATION = "`*\"' \t"


@dataclass(frozen=True)
class ParsedToolCalls:
    """Tool calls read from a model output; valid is False when any call's input is missing or bad."""

    actions: tuple[ToolAction, ...]
    valid: bool


def _strip_code_fence(text: str) -> str:
    stripped = text.strip()
    if stripped.startswith("```"):
        first_newline = stripped.find("\n")
        stripped = "" if first_newline < 0 else stripped[first_newline + 1 :]
        stripped = stripped.rstrip().removesuffix("```")
    return stripped.strip()


def _parse_action_input(segment: str) -> dict[str, Any] | None:
    text = _strip_code_fence(segment)
    try:
        value, _ = _DECODER.raw_decode(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def parse_react_tool_calls(output: str) -> ParsedToolCalls:
    """Read `Action: <name>` / `Action Input: <json>` pairs from a ReAct transcript.

    An Action Input runs until the next Action/Action Input/Observation/Final Answer/Thought marker
    (or the end), may span lines and sit in ``` fences; the first JSON value in it is used. An
    action without an input, an input without an action, or an input that is not a JSON object
    makes the whole transcript invalid.
    """
    markers = list(_REACT_MARKER.finditer(output))
    names: list[str] = []
    inputs: list[dict[str, Any]] = []
    valid = True
    for position, marker in enumerate(markers):
        end = markers[position + 1].start() if position + 1 < len(markers) else len(output)
        segment = output[marker.end() : end]
        kind = " ".join(marker.group("kind").casefold().split())
        if kind == "action":
            if len(names) > len(inputs):
                valid = False  # the previous action never got an input
                inputs.append({})
            name = segment.split("\n", 1)[0].strip(_NAME_DECORATION)
            valid = valid and bool(name)
            names.append(name)
        elif kind in ("action input", "actioninput"):
            if len(names) != len(inputs) + 1:
                valid = False  # an input with no action waiting for it
                continue
            arguments = _parse_action_input(segment)
            if arguments is None:
                valid = False
                arguments = {}
            inputs.append(arguments)
    if len(names) > len(inputs):
        valid = False
        inputs.extend({} for _ in range(len(names) - len(inputs)))
    actions = tuple(ToolAction(name=name, arguments=args) for name, args in zip(names, inputs, strict=True))
    return ParsedToolCalls(actions=actions, valid=valid)


def grade_tool_call(output: str, references: Sequence[Any], options: Mapping[str, Any]) -> float:
    """1.0 iff the output's multiset of action names equals the golden one and the merged inputs
    (dict.update over every Action Input, in order) equal the golden merged inputs; order of
    actions does not matter for names. Any missing or unparsable input scores 0."""
    parsed = parse_react_tool_calls(output)
    goldens = [parse_tool_call_reference(ref) for ref in _string_references(references)]
    if not parsed.valid:
        return 0.0
    names = Counter(action.name for action in parsed.actions)
    merged = merged_arguments(parsed.actions)
    for golden in goldens:
        if names == Counter(action.name for action in golden) and json_equal(
            merged, merged_arguments(golden)
        ):
            return 1.0
    return 0.0


# --------------------------------------------------------------------------- choice


def grade_choice(option_logliks: Sequence[float], reference_index: int) -> float:
    """1.0 iff the reference option's log-likelihood is higher than every other option's.

    A tie for the highest is a miss wherever the reference stands, so a model that scores every
    option alike (a diverged one gives NaN everywhere) earns nothing; NaN counts as -inf.
    """
    if not option_logliks:
        raise ValueError("at least one option log-likelihood is required")
    if not 0 <= reference_index < len(option_logliks):
        raise ValueError(f"reference_index {reference_index} out of range for {len(option_logliks)} options")
    scores = [-math.inf if math.isnan(value) else value for value in option_logliks]
    reference = scores[reference_index]
    others = scores[:reference_index] + scores[reference_index + 1 :]
    return float(reference > -math.inf and all(reference > score for score in others))


# --------------------------------------------------------------------------- registry

GRADERS: Mapping[str, GraderFn] = MappingProxyType(
    {
        "exact_match": grade_exact_match,
        "contains": grade_contains,
        "regex": grade_regex,
        "numeric": grade_numeric,
        "json_match": grade_json_match,
        "tool_call": grade_tool_call,
    }
)
# "choice" is scored from log-likelihoods by grade_choice, not from generated text.
KNOWN_GRADERS: frozenset[str] = frozenset({*GRADERS, "choice"})


def unknown_grader(grader: object) -> str:
    """The one message for a grader name we do not have, listing those we do."""
    return f"unknown grader {grader!r} (known: {', '.join(sorted(KNOWN_GRADERS))})"


def grade(
    grader: str,
    output: str,
    reference: Reference | Mapping[str, Any],
    options: Mapping[str, Any] | None = None,
) -> float:
    """Score one generated output with a named text grader (1.0 pass / 0.0 fail).

    reference is one reference or a list of alternatives. json_match also takes a JSON object
    (a list is always read as alternatives, so give a JSON-array reference as JSON text).
    """
    if grader == "choice":
        raise ValueError("the choice grader needs option log-likelihoods: use grade_choice")
    if grader not in GRADERS:
        raise ValueError(unknown_grader(grader))
    references: Sequence[Any] = [reference] if isinstance(reference, str | Mapping) else list(reference)
    return GRADERS[grader](output, references, options or {})
