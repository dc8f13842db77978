"""Acquire, renew and release leases with compare-and-set UPDATEs (no row locks held across work).

A worker holds `job:<id>` while it runs a job and renews it from a heartbeat thread. If the worker is
killed, renewals stop and the lease expires, so the redelivered task (or the reaper) may take the job
over and resume it from its last checkpoint; while the lease is live, a duplicate delivery does nothing.
"""

from __future__ import annotations

import time

from sqlalchemy import delete, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.leases.models import Lease


def job_key(job_id: str) -> str:
    return f"job:{job_id}"


def lineage_key(version_id: str) -> str:
    return f"lineage:{version_id}"


def reap_key(job_id: str) -> str:
    """Held while a message for the job is on its way (a reaper's re-send, a lineage wait's next check)."""
    return f"reap:{job_id}"


def acquire(
    session: Session, *, key: str, owner: str, job_id: str, ttl_seconds: float, same_job_ok: bool = False
) -> bool:
    """Take `key` if it is free, expired, or already ours. With `same_job_ok`, also when another worker
    holds it for the same job (a lineage lease after the job lease was taken over). Flushes only."""
    now = time.time()
    ours = or_(Lease.owner == owner, Lease.expires_at < now)
    if same_job_ok:
        ours = or_(ours, Lease.job_id == job_id)
    taken = session.execute(
        update(Lease)
        .where(Lease.key == key, ours)
        .values(owner=owner, job_id=job_id, expires_at=now + ttl_seconds, acquired_at=now)
        .execution_options(synchronize_session=False)
    )
    if taken.rowcount == 1:  # type: ignore[attr-defined]
        return True
    if session.get(Lease, key) is not None:
        return False
    try:
        with session.begin_nested():
            session.add(
                Lease(key=key, owner=owner, job_id=job_id, expires_at=now + ttl_seconds, acquired_at=now)
            )
    except IntegrityError:  # someone inserted it first
        return False
    return True


def renew(session: Session, *, key: str, owner: str, ttl_seconds: float) -> bool:
    """Extend our lease; False when it is no longer ours (expired and taken over)."""
    result = session.execute(
        update(Lease)
        .where(Lease.key == key, Lease.owner == owner)
        .values(expires_at=time.time() + ttl_seconds)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def release(session: Session, *, key: str, owner: str) -> None:
    session.execute(delete(Lease).where(Lease.key == key, Lease.owner == owner))


def holder(session: Session, key: str) -> Lease | None:
    """The live lease on `key`, if any."""
    return session.scalar(select(Lease).where(Lease.key == key, Lease.expires_at >= time.time()))
