"""What counts as storable text, for request bodies and uploaded rows alike: no NUL (PostgreSQL cannot
store it in text or JSONB; SQLite can, so it would be a 500 on one backend and stored on the other) and
no lone UTF-16 surrogate (a valid JSON escape such as \\ud800 that is not a character: it cannot be
encoded as UTF-8, tokenized or hashed). Non-finite numbers (NaN, Infinity, which Python's JSON reader
accepts) are not JSON either, so free-form values may not hold them."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

_NOT_TEXT = re.compile("[\x00\ud800-\udfff]")
NOT_TEXT_REASON = "holds a NUL (\\u0000) or a lone UTF-16 surrogate (such as \\ud800), which is not text"
NOT_A_NUMBER_REASON = "holds NaN or Infinity, which is not a JSON number"


def field_path(parts: Sequence[str | int]) -> str:
    """("stages", 0, "hyperparameters") -> "stages[0].hyperparameters"; () -> ""."""
    path = ""
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def is_text(value: str) -> bool:
    return _NOT_TEXT.search(value) is None


def find_unstorable(value: Any, path: tuple[str | int, ...] = ()) -> tuple[tuple[str | int, ...], str] | None:
    """(path, reason) of the first string (key or value) that is not text, or float that is not finite,
    inside nested JSON-like data; None when everything can be stored."""
    if isinstance(value, str):
        return None if is_text(value) else (path, NOT_TEXT_REASON)
    if isinstance(value, float):
        return None if math.isfinite(value) else (path, NOT_A_NUMBER_REASON)
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and not is_text(key):
                return (*path, key), NOT_TEXT_REASON
            found = find_unstorable(item, (*path, key))
            if found is not None:
                return found
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = find_unstorable(item, (*path, index))
            if found is not None:
                return found
    return None
