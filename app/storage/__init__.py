"""Artifact storage (uploads, checkpoints, reports, plots), content-addressed by sha256."""

from pathlib import Path

from app.storage.base import Store, StoredObject, file_uri_to_path, tree_sha256
from app.storage.local import LocalStore

__all__ = ["LocalStore", "Store", "StoredObject", "file_uri_to_path", "make_store", "tree_sha256"]


def make_store(storage_dir: Path) -> Store:
    """The configured store (local filesystem for now)."""
    return LocalStore(storage_dir)
