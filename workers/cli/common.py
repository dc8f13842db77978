"""Helpers every command module shares: the exit code for bad input and how problems are reported."""

from __future__ import annotations

import os
import sys

EXIT_BAD_INPUT = 2


def report_problems(problems: list[str]) -> int:
    print(f"sdft: {len(problems)} problem(s), nothing was run:", file=sys.stderr)
    for p in problems:
        print(f"  {p}", file=sys.stderr)
    return EXIT_BAD_INPUT


def backend_problems(backend: str | None) -> list[str]:
    """`--backend vllm` where vLLM cannot run: the problem, with how to fix it (`sdft train`, `eval`,
    `gate`)."""
    from workers.evaluation.engine import vllm_unavailable_reason

    reason = vllm_unavailable_reason() if backend == "vllm" else None
    return [f"backend: {reason}"] if reason else []


def quiet_engine_log() -> None:
    """Local commands (train, eval, gate, experiment) print their own progress and results; there
    vLLM logs only errors unless VLLM_LOGGING_LEVEL says otherwise. Its INFO lines and expected
    warnings (a reload notice every step, "Failed to load weights" for the layers without
    checkpoint tensors, a tokenizer-less warmup traceback) would bury them. Workers keep vLLM's log.
    Must run before vLLM is imported."""
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
