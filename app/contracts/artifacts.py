"""Content hashes of model directories and durable directory writes, shared by the registry, the store
and the trainer (no torch)."""

from __future__ import annotations

import hashlib
import os
import shutil
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


# --------------------------------------------------------------------------- durable writes


def fsync_dir(directory: Path) -> None:
    """Make a directory's entries (a rename, a new file) survive a power cut."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and directory under root (root included): its content is on disk."""
    for path in sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if path.is_file():
            with path.open("rb") as f:
                os.fsync(f.fileno())
        elif path.is_dir():
            fsync_dir(path)
    fsync_dir(root)


def publish_dir(staging: Path, final: Path) -> None:
    """Write -> fsync -> rename -> fsync the parent: `staging` becomes `final` whole. An existing `final`
    is set aside first and removed after, so a crash leaves the old one or the new one in place (or,
    between the two renames, the old one under a `.replaced-` name), never a torn directory."""
    fsync_tree(staging)
    parent = final.parent
    retired = None
    if final.exists():
        retired = parent / f".replaced-{final.name}-{os.getpid()}"
        final.rename(retired)
    staging.rename(final)
    fsync_dir(parent)
    if retired is not None:
        shutil.rmtree(retired, ignore_errors=True)
