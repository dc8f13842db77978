"""Suites as the CLI reads them: a JSONL file plus an optional `FILE.meta.json` sidecar, a `FILE:role`
spec for `sdft gate`, and a progress bar per suite."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from tqdm import tqdm

from app.evaluation.gate import Role
from app.evaluation.suites import EvalSuite, SuiteError, SuiteMeta, load_suite_file


def suite_name_from_path(path: str | Path) -> str:
    """A valid suite name from a file name: the stem, lower-cased, other characters turned into '-'."""
    stem = Path(path).name.split(".", 1)[0].lower()
    name = "".join(char if char.isascii() and (char.isalnum() or char in "._-") else "-" for char in stem)
    return name[:64] or "suite"


def load_suite_spec(
    path: str | Path, *, grader: str | None = None, max_new_tokens: int | None = None
) -> tuple[EvalSuite | None, list[str]]:
    """Read a JSONL suite and its metadata; (suite, []) or (None, every problem found, each naming
    the file and, for rows, the line).

    Metadata comes from the sidecar `FILE.meta.json` (SuiteMeta keys; name defaults to the file
    stem) when there is one, else from `grader` (default exact_match). `max_new_tokens` overrides the
    decoding either way; a `grader` that contradicts the sidecar is a problem, not silently ignored.
    """
    file = Path(path)
    if not file.is_file():
        return None, [f"{file}: no such file"]
    sidecar = Path(f"{file}.meta.json")
    problems: list[str] = []
    raw: dict[str, Any] = {}
    if sidecar.is_file():
        try:
            loaded = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as error:
            return None, [f"{sidecar}: not valid JSON: {error}"]
        if not isinstance(loaded, dict):
            return None, [f"{sidecar}: must hold a JSON object of suite metadata"]
        raw = dict(loaded)
        if grader is not None and raw.get("grader", "exact_match") != grader:
            problems.append(
                f"{sidecar}: grader {raw.get('grader', 'exact_match')!r} contradicts --grader {grader}"
            )
    else:
        raw["grader"] = grader or "exact_match"
    raw.setdefault("name", suite_name_from_path(file))
    if max_new_tokens is not None:
        raw["decoding"] = {**(raw.get("decoding") or {}), "max_new_tokens": max_new_tokens}
    try:
        meta = SuiteMeta.model_validate(raw)
    except ValidationError as error:
        where = sidecar if sidecar.is_file() else file
        for detail in error.errors():
            field = ".".join(str(part) for part in detail["loc"]) or "metadata"
            problems.append(f"{where}: {field}: {detail['msg'].removeprefix('Value error, ')}")
        return None, problems
    try:
        suite = load_suite_file(file, meta)
    except SuiteError as error:
        return None, [*problems, *(f"{file}: {problem}" for problem in error.problems)]
    except (OSError, UnicodeDecodeError) as error:
        return None, [*problems, f"{file}: cannot be read: {error}"]
    return (None if problems else suite), problems


GATE_ROLES: dict[str, Role] = {"prior": "prior", "new": "new_skill", "new_skill": "new_skill"}


def split_suite_role(spec: str) -> tuple[str, Role, str | None]:
    """`FILE[:prior|:new]` -> (file, gate role, problem or None); the role defaults to prior. A file
    whose own name contains ':' is taken whole when it exists."""
    head, sep, suffix = spec.rpartition(":")
    if not sep or Path(spec).exists():
        return spec, "prior", None
    if suffix in GATE_ROLES:
        return head, GATE_ROLES[suffix], None
    return head, "prior", f"{spec}: unknown role {suffix!r} (use FILE:prior or FILE:new)"


class SuiteProgressBars:
    """A progress(suite, done, total) callback drawing one tqdm bar per suite on stderr."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.suite: str | None = None
        self.bar: tqdm | None = None

    def __call__(self, suite: str, done: int, total: int) -> None:
        if self.bar is None or suite != self.suite:
            self.close()
            self.suite = suite
            self.bar = tqdm(total=total, desc=f"{self.label} {suite}", unit="item", leave=False)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
