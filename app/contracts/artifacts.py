"""Content hashes of model directories, shared by the registry and the trainer (no torch)."""

from __future__ import annotations

import hashlib
from pathlib import Path

# Files that define a model's behaviour; logs, optimizer state and metrics do not change the model.
MODEL_FILE_SUFFIXES = (".safetensors", ".json", ".jinja", ".txt", ".model")
IGNORED_NAMES = frozenset({"meta.json", "metrics.jsonl", "trainer_state.json"})


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def model_files(directory: Path) -> list[Path]:
    return sorted(
        p
        for p in directory.rglob("*")
        if p.is_file() and p.suffix in MODEL_FILE_SUFFIXES and p.name not in IGNORED_NAMES
    )


def model_dir_sha256(directory: str | Path) -> str:
    """sha256 over (relative path, file sha256) of every model-defining file, in sorted order."""
    root = Path(directory)
    files = model_files(root)
    if not files:
        raise FileNotFoundError(f"no model files in {root}")
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.relative_to(root).as_posix()}\0{file_sha256(path)}\n".encode())
    return digest.hexdigest()
