"""`sdft gc`: removes ended jobs' run directories and stored files nothing refers to, never what a
model version or an uploaded file points at, nor the runs of jobs still in progress."""

from __future__ import annotations

import os
import time
from pathlib import Path

from sqlalchemy import update

from app.auth.models import ApiToken
from app.auth.service import Principal, Scope
from app.bootstrap import ensure_database
from app.db import make_engine, make_sessionmaker, session_scope
from app.files import service as files
from app.files.service import FilePurpose
from app.jobs.models import Job
from app.registry import service as registry
from app.settings import Settings
from app.storage import make_store
from app.storage.gc import collect_garbage
from tests.app.api.conftest import write_model_dir

ADMIN = Principal(token_id="tok_gc", name="gc", scopes=frozenset({Scope.ADMIN}))


def _job(session: object, job_id: str, status: str, base_id: str) -> None:
    session.add(  # type: ignore[attr-defined]
        Job(
            id=job_id,
            owner_token_id=ADMIN.token_id,
            team="default",
            status=status,
            base_version_id=base_id,
            request={},
            current_stage=0,
            candidate_version_ids=[],
            deliveries=0,
            request_sha256="0" * 64,
            created_at=0,
            updated_at=0,
            status_changed_at=0,
        )
    )


def test_gc_keeps_what_is_referenced_and_removes_the_rest(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    ensure_database(settings)
    sessions = make_sessionmaker(make_engine(settings.database_url))
    store = make_store(settings.storage_path)
    model = write_model_dir(tmp_path / "model")
    with session_scope(sessions) as session:
        session.add(
            ApiToken(id=ADMIN.token_id, name="gc", token_sha256="1" * 64, scopes=["admin"], created_at=0)
        )
        session.flush()
        base, _ = registry.register_base(session, path=model, name="m", description=None)
        kept_file = files.create_file(
            session, store, principal=ADMIN, filename="d.jsonl", purpose=FilePurpose.DEMONSTRATIONS,
            content=b'{"prompt": "q", "demonstration": "a"}\n',
        )  # fmt: skip
        version_tree = store.put_dir(model)
        _job(session, "job_done", "succeeded", base.id)
        _job(session, "job_live", "running", base.id)
        registry.register_version(
            session, parent_id=base.id, job_id="job_done", skill="s", checkpoint_uri=version_tree.uri,
            checkpoint_sha256="2" * 64,
        )  # fmt: skip
    orphan_blob = store.put_bytes(b"nobody's", suffix=".jsonl")
    scratch = write_model_dir(tmp_path / "scratch")
    (scratch / "other.json").write_text("{}")  # content no version has
    orphan_tree = store.put_dir(scratch)
    runs = settings.storage_path / "runs"
    for job_id in ("job_done", "job_live", "job_unknown"):
        (runs / job_id / "stage-0" / "checkpoints").mkdir(parents=True)
        (runs / job_id / "stage-0" / "checkpoints" / "optimizer.pt").write_bytes(b"x" * 1000)

    with session_scope(sessions) as session:  # just written: may be about to be referenced, so kept
        fresh = collect_garbage(session, settings.storage_path, dry_run=True)
    assert {path.name for path in fresh.removed} == {"job_done"}
    # Written two hours ago, the orphan tree goes; stored again (a worker's retry finds the same
    # tree, about to register it), it is fresh again and kept.
    tree = store.local_path(orphan_tree.uri)
    os.utime(tree, (time.time() - 7200, time.time() - 7200))
    with session_scope(sessions) as session:
        assert tree.name in {
            p.name for p in collect_garbage(session, settings.storage_path, dry_run=True).removed
        }
    assert store.put_dir(scratch).uri == orphan_tree.uri
    with session_scope(sessions) as session:
        assert tree.name not in {
            p.name for p in collect_garbage(session, settings.storage_path, dry_run=True).removed
        }

    with session_scope(sessions) as session:
        dry = collect_garbage(session, settings.storage_path, dry_run=True, grace_seconds=0)
    removed = {path.name for path in dry.removed}
    assert removed == {"job_done", Path(orphan_tree.uri).name, Path(orphan_blob.uri).name}
    assert (runs / "job_done").exists(), "a dry run removes nothing"
    with session_scope(sessions) as session:
        report = collect_garbage(session, settings.storage_path, dry_run=False, grace_seconds=0)
    assert report.bytes_freed > 1000 and report.kept_runs == 2
    assert not (runs / "job_done").exists()
    assert (runs / "job_live").exists() and (runs / "job_unknown").exists()
    assert store.exists(version_tree.uri) and store.exists(kept_file.storage_uri)
    assert not store.exists(orphan_tree.uri) and not store.exists(orphan_blob.uri)
    # A version's files are read-only: the store never rewrites what a hash names.
    stored = store.local_path(version_tree.uri)
    assert all(not (p.stat().st_mode & 0o222) for p in stored.rglob("*") if p.is_file())
    with session_scope(sessions) as session:  # the job's version outlives its run directory
        session.execute(update(Job).where(Job.id == "job_live").values(status="cancelled"))
        assert {
            p.name
            for p in collect_garbage(session, settings.storage_path, dry_run=True, grace_seconds=0).removed
        } == {"job_live"}


def test_gc_spares_a_blob_uploaded_again_during_the_walk(tmp_path: Path, monkeypatch: object) -> None:
    # The same bytes uploaded again while gc runs: the store touches the blob and the new row commits
    # later. gc re-checks the time just before removing, so the new file keeps its bytes.
    settings = Settings(data_dir=tmp_path)
    ensure_database(settings)
    sessions = make_sessionmaker(make_engine(settings.database_url))
    store = make_store(settings.storage_path)
    contents = [b"an orphan blob", b"another orphan blob"]
    paths = [store.local_path(store.put_bytes(content, suffix=".jsonl").uri) for content in contents]
    for path in paths:
        os.utime(path, (time.time() - 7200, time.time() - 7200))
    # gc removes in path order: the first goes, the second is uploaded again while the first is sized.
    gone, uploaded_again = sorted(zip(paths, contents, strict=True))
    import app.storage.gc as gc

    measure = gc._size

    def upload_during_walk(path: Path) -> int:
        store.put_bytes(uploaded_again[1], suffix=".jsonl")
        return measure(path)

    monkeypatch.setattr(gc, "_size", upload_during_walk)  # type: ignore[attr-defined]
    with session_scope(sessions) as session:
        report = collect_garbage(session, settings.storage_path, dry_run=False)
    assert report.removed == [gone[0]]
    assert uploaded_again[0].exists() and not gone[0].exists()
