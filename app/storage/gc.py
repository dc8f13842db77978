"""`sdft gc`: give back the disk that nothing refers to any more, never a registered version's files.

Removed: the run directories (checkpoints, scratch final models) of jobs that have ended (their
versions live in the store's trees), stored trees no version points at, and stored blobs no uploaded
file points at. Kept: everything a model version or a file row references, the runs of jobs still in
progress (they resume from those checkpoints), and any tree or blob written in the last
`grace_seconds`: a worker stores a model's tree before it registers the version, and an upload its
blob before its row commits, so a fresh one may be about to be referenced (the store touches one it
finds already there).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.files.models import UploadedFile
from app.jobs.models import Job
from app.jobs.states import TERMINAL_STATUSES
from app.registry.models import ModelVersion
from app.storage.base import file_uri_to_path

# Far longer than storing a model's tree and registering its version, or storing an upload's blob and
# committing its row, take.
GC_GRACE_SECONDS = 3600.0


@dataclass
class GcReport:
    removed: list[Path] = field(default_factory=list)
    kept_runs: int = 0
    bytes_freed: int = 0

    def summary(self, dry_run: bool) -> str:
        verb = "would remove" if dry_run else "removed"
        return (
            f"{verb} {len(self.removed)} item(s), {self.bytes_freed / 1e6:.1f} MB; "
            f"kept {self.kept_runs} run(s) of unfinished jobs"
        )


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _referenced(uris: list[str]) -> set[Path]:
    found = set()
    for uri in uris:
        try:
            found.add(file_uri_to_path(uri).resolve())
        except ValueError:  # a remote uri: nothing of ours on this disk
            continue
    return found


def collect_garbage(
    session: Session, storage_root: Path, *, dry_run: bool, grace_seconds: float = GC_GRACE_SECONDS
) -> GcReport:
    root = storage_root.expanduser().resolve()
    fresh_after = time.time() - grace_seconds

    def fresh(path: Path) -> bool:
        try:
            return path.stat().st_mtime > fresh_after
        except FileNotFoundError:  # removed meanwhile (a lost rename race): nothing to collect
            return True

    report = GcReport()
    versions = _referenced(list(session.scalars(select(ModelVersion.checkpoint_uri))))
    blobs = _referenced(list(session.scalars(select(UploadedFile.storage_uri))))
    ended = {str(s) for s in TERMINAL_STATUSES}
    statuses = dict(session.execute(select(Job.id, Job.status)).tuples().all())
    candidates: list[Path] = []
    stored: set[Path] = set()  # trees and blobs: spared if written or touched by the time they go
    for run in sorted((root / "runs").glob("*")) if (root / "runs").is_dir() else []:
        # A job's run directory that a version still points into (registered before versions went into
        # the store's trees) is kept like any other version file.
        pinned = any(path.is_relative_to(run) for path in versions)
        if statuses.get(run.name) in ended and not pinned:
            candidates.append(run)
        else:
            report.kept_runs += 1
    for tree in sorted((root / "trees").glob("*")) if (root / "trees").is_dir() else []:
        if (tree.name.startswith(".tmp-") or tree.resolve() not in versions) and not fresh(tree):
            candidates.append(tree)
            stored.add(tree)
    for blob in sorted((root / "blobs").rglob("*")) if (root / "blobs").is_dir() else []:
        if blob.is_file() and blob.resolve() not in blobs and not fresh(blob):
            candidates.append(blob)
            stored.add(blob)
    for path in candidates:
        # Checked again just before removing: an upload of the same bytes since the walk touched it,
        # and its row may not be committed yet.
        if path in stored and fresh(path):
            continue
        report.bytes_freed += _size(path)
        report.removed.append(path)
        if not dry_run:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
    return report
