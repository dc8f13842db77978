"""Filesystem store: ``<root>/blobs/<sha[:2]>/<sha><suffix>`` and ``<root>/trees/<sha>/``; uris are file://.

Writes go to a temporary name in the same directory and are renamed into place, so a reader never
sees a half-written object and a crash leaves at most a stray temporary file.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from app.contracts.artifacts import file_sha256, fsync_dir, fsync_tree
from app.storage.base import StoredObject, file_uri_to_path, tree_sha256

_SUFFIX = re.compile(r"^(\.[A-Za-z0-9]{1,16})?$")


def _touch(path: Path) -> bool:
    """Mark a stored object fresh, so `sdft gc` spares it until the caller references it; False when
    it is not there (never stored, or collected a moment ago)."""
    try:
        os.utime(path)
    except FileNotFoundError:
        return False
    return True


class LocalStore:
    def __init__(self, root: Path) -> None:
        self.root = root.expanduser().resolve()

    def _blob_path(self, sha256: str, suffix: str) -> Path:
        if not _SUFFIX.match(suffix):
            raise ValueError(f"invalid suffix {suffix!r}")
        return self.root / "blobs" / sha256[:2] / f"{sha256}{suffix}"

    def put_bytes(self, data: bytes, *, suffix: str = "") -> StoredObject:
        sha256 = hashlib.sha256(data).hexdigest()
        target = self._blob_path(sha256, suffix)
        if not _touch(target):
            _write_blob(target, lambda tmp: tmp.write_bytes(data))
        return StoredObject(uri=target.as_uri(), sha256=sha256, size=len(data))

    def put_file(self, path: Path, *, suffix: str = "") -> StoredObject:
        sha256 = file_sha256(path)
        target = self._blob_path(sha256, suffix)
        if not _touch(target):
            _write_blob(target, lambda tmp: shutil.copyfile(path, tmp))
        return StoredObject(uri=target.as_uri(), sha256=sha256, size=target.stat().st_size)

    def put_dir(self, path: Path) -> StoredObject:
        """Copy a directory in under its tree sha256, durably; its files are made read-only, because a
        stored tree (a registered model version) must never change under its hash."""
        sha256 = tree_sha256(path)
        target = self.root / "trees" / sha256
        if target.exists():
            os.utime(target)  # fresh again: `sdft gc` spares it until the caller references it
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
            try:
                shutil.copytree(path, tmp, dirs_exist_ok=True)
                tmp.chmod(0o755)  # mkdtemp makes it owner-only; the models are shared
                for copied in tmp.rglob("*"):
                    if copied.is_file():
                        copied.chmod(0o444)
                fsync_tree(tmp)
                os.replace(tmp, target)
                fsync_dir(target.parent)
            except OSError:
                shutil.rmtree(tmp, ignore_errors=True)
                if not target.exists():  # losing a rename race to an identical copy is fine
                    raise
        size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
        return StoredObject(uri=target.as_uri(), sha256=sha256, size=size)

    def local_path(self, uri: str) -> Path:
        path = file_uri_to_path(uri).resolve()
        if not path.is_relative_to(self.root):
            raise ValueError(f"uri outside the store: {uri!r}")
        return path

    def open(self, uri: str) -> BinaryIO:
        return self.local_path(uri).open("rb")

    def exists(self, uri: str) -> bool:
        try:
            return self.local_path(uri).exists()
        except ValueError:
            return False


def _write_blob(target: Path, write: Callable[[Path], object]) -> None:
    """Write to a temporary name beside `target`, fsync, rename into place, fsync the directory."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
        fsync_dir(target.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
