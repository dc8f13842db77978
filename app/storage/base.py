"""The Store interface. Keys are content hashes, so writing the same bytes twice stores them once and a
uri always names the same content. The local filesystem store is the default; an S3-compatible store
would implement the same protocol (not shipped yet: boto3 is not a dependency)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol
from urllib.parse import unquote, urlparse

from app.contracts.artifacts import file_sha256


@dataclass(frozen=True)
class StoredObject:
    uri: str
    sha256: str
    size: int


class Store(Protocol):
    def put_bytes(self, data: bytes, *, suffix: str = "") -> StoredObject:
        """Store bytes under their sha256."""
        ...

    def put_file(self, path: Path, *, suffix: str = "") -> StoredObject:
        """Store one file's content under its sha256."""
        ...

    def put_dir(self, path: Path) -> StoredObject:
        """Store a directory tree under `tree_sha256` of its files."""
        ...

    def open(self, uri: str) -> BinaryIO:
        """Read a stored file."""
        ...

    def exists(self, uri: str) -> bool: ...

    def local_path(self, uri: str) -> Path:
        """A local path holding the object (a remote store would download into a cache)."""
        ...


def tree_sha256(root: Path) -> str:
    """sha256 over (relative path, file sha256) of every file under root, in sorted order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(root).as_posix()}\0{file_sha256(path)}\n".encode())
    return digest.hexdigest()


def file_uri_to_path(uri: str) -> Path:
    """file:///a/b%20c -> Path("/a/b c"); raises ValueError for other schemes."""
    parsed = urlparse(uri)
    if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
        raise ValueError(f"not a local file uri: {uri!r}")
    return Path(unquote(parsed.path))
