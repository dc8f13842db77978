"""Checks that a directory holds a usable chat model, without torch: config.json, a tokenizer that
loads, a chat template, and safetensors weights whose headers parse and whose tensors fit the file."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

# A safetensors header above this size is corrupt (real ones are kilobytes to a few megabytes).
MAX_SAFETENSORS_HEADER_BYTES = 100 * 1024 * 1024


def _read_json_object(path: Path) -> dict[str, Any] | str:
    """The JSON object in path, or a reason it is not one."""
    if not path.is_file():
        return "missing"
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"not readable JSON ({exc})"
    return value if isinstance(value, dict) else "must be a JSON object"


def safetensors_problem(path: Path) -> str | None:
    """Why a .safetensors file is unusable, or None: parses the header, checks every tensor's offsets."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                return "shorter than the 8-byte header length"
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > min(size - 8, MAX_SAFETENSORS_HEADER_BYTES):
                return f"header length {header_len} does not fit the file"
            header = json.loads(f.read(header_len).decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"unreadable header ({exc})"
    if not isinstance(header, dict):
        return "header is not a JSON object"
    data_len = size - 8 - header_len
    tensors = {name: info for name, info in header.items() if name != "__metadata__"}
    if not tensors:
        return "holds no tensors"
    for name, info in tensors.items():
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= data_len
            or not isinstance(info.get("dtype"), str)
            or not isinstance(info.get("shape"), list)
        ):
            return f"tensor {name!r} has an invalid entry or points outside the file"
    return None


def _chat_template_problem(directory: Path, tokenizer_config: dict[str, Any]) -> str | None:
    template = tokenizer_config.get("chat_template")
    if isinstance(template, str) and template.strip():
        return None
    if isinstance(template, list) and template:  # named templates: [{"name": ..., "template": ...}]
        return None
    jinja = directory / "chat_template.jinja"
    if jinja.is_file() and jinja.read_text(encoding="utf-8", errors="replace").strip():
        return None
    return "no chat template (tokenizer_config.json chat_template or chat_template.jinja)"


def model_dir_problems(directory: Path) -> list[str]:
    """Every reason the directory cannot be registered as a chat model (empty when it can)."""
    if not directory.is_absolute():
        return ["must be an absolute path"]
    try:
        is_dir = directory.is_dir()
    except OSError as exc:  # a name too long for the filesystem, say
        return [f"cannot be read: {exc.strerror or exc}"]
    if not is_dir:
        return ["is not a directory"]
    problems: list[str] = []
    config = _read_json_object(directory / "config.json")
    if isinstance(config, str):
        problems.append(f"config.json: {config}")
    try:
        Tokenizer.from_file(str(directory / "tokenizer.json"))
    except Exception as exc:  # the tokenizers library raises plain Exceptions
        problems.append(f"tokenizer.json: does not load ({exc})")
    tokenizer_config = _read_json_object(directory / "tokenizer_config.json")
    if isinstance(tokenizer_config, str):
        problems.append(f"tokenizer_config.json: {tokenizer_config}")
        tokenizer_config = {}
    template_problem = _chat_template_problem(directory, tokenizer_config)
    if template_problem:
        problems.append(template_problem)
    weights = sorted(directory.glob("*.safetensors"))
    if not weights:
        problems.append("no *.safetensors weights")
    for path in weights:
        problem = safetensors_problem(path)
        if problem:
            problems.append(f"{path.name}: {problem}")
    index = directory / "model.safetensors.index.json"
    if index.exists():
        index_json = _read_json_object(index)
        weight_map = index_json.get("weight_map") if isinstance(index_json, dict) else None
        if not isinstance(weight_map, dict):
            problems.append("model.safetensors.index.json: no weight_map")
        else:
            missing = sorted({str(s) for s in weight_map.values()} - {p.name for p in weights})
            if missing:
                problems.append(f"model.safetensors.index.json: missing shard(s) {', '.join(missing)}")
    return problems
