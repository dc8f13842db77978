"""Aliases (`production`, `staging`, ...): named pointers to model versions, moved by compare-and-set,
with an append-only history. Moving an alias never deletes or rewrites a version."""

from __future__ import annotations

import re
from collections.abc import Sequence
from enum import Enum, StrEnum

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db import new_id, now
from app.errors import Conflict, NotFound, Unprocessable
from app.pagination import paginate
from app.registry.models import Alias, AliasHistory, ModelVersion
from app.registry.service import VersionStatus, get_version
from app.webhooks import service as webhooks
from app.webhooks.schemas import EventType

ALIAS_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
_ALIAS_NAME = re.compile(ALIAS_NAME_PATTERN)


class Unset(Enum):
    """`expected_version` not given: move unconditionally (still atomic against concurrent moves)."""

    UNSET = "unset"


UNSET = Unset.UNSET


class AliasAction(StrEnum):
    PROMOTE = "promote"
    ROLLBACK = "rollback"


def check_alias_name(name: str, *, param: str = "name") -> None:
    if not _ALIAS_NAME.match(name):
        raise Unprocessable(
            f"invalid alias name {name!r}: lowercase letters, digits, '.', '_' or '-', at most 64",
            code="invalid_alias_name",
            param=param,
        )


def get_alias(session: Session, name: str) -> Alias:
    alias = session.get(Alias, name)
    if alias is None:
        raise NotFound(f"no alias {name!r}", code="alias_not_found", param="name")
    return alias


def _stale(name: str, expected: str | None, current: str | None) -> Conflict:
    return Conflict(
        f"alias {name!r} points at {current or 'nothing'}, not {expected or 'nothing'}: "
        "someone moved it first",
        code="alias_conflict",
        param="expected_version",
    )


def _swap(session: Session, name: str, from_version: str | None, to_version: str) -> bool:
    """Atomically point `name` at `to_version` if it still points at `from_version` (None: absent)."""
    timestamp = now()
    if from_version is None:
        try:
            with session.begin_nested():
                session.add(
                    Alias(name=name, model_version_id=to_version, created_at=timestamp, updated_at=timestamp)
                )
        except IntegrityError:
            return False  # created concurrently
        return True
    result = session.execute(
        update(Alias)
        .where(Alias.name == name, Alias.model_version_id == from_version)
        .values(model_version_id=to_version, updated_at=timestamp)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def _record(
    session: Session,
    *,
    name: str,
    action: AliasAction,
    from_version: str | None,
    to_version: str,
    actor: str,
    reason: str | None,
    forced: bool,
) -> AliasHistory:
    entry = AliasHistory(
        id=new_id("ahist"),
        alias_name=name,
        action=str(action),
        from_version_id=from_version,
        to_version_id=to_version,
        actor=actor,
        reason=reason,
        forced=forced,
        created_at=now(),
    )
    session.add(entry)
    session.flush()
    session.expire_all()  # the alias row was changed by a bulk UPDATE
    webhooks.record_event(  # every team's subscribers: the registry is shared
        session,
        type=EventType.ALIAS_MOVED,
        data={
            "alias": name,
            "action": str(action),
            "from_version_id": from_version,
            "to_version_id": to_version,
            "reason": reason,
            "forced": forced,
            "history_id": entry.id,
        },
        team=None,
    )
    return entry


def _forced(version: ModelVersion, *, force: bool, reason: str | None) -> bool:
    """Whether moving an alias onto `version` is forced: a version that is not accepted needs
    force=True and a reason, whether the move is a promotion or a rollback."""
    if version.status == VersionStatus.ACCEPTED:
        return False
    if not force:
        raise Conflict(
            f"{version.id} is {version.status}; moving an alias onto it needs force=true and a reason",
            code="version_not_accepted",
            param="force",
        )
    if not (reason and reason.strip()):
        raise Unprocessable("a forced move needs a reason", code="reason_required", param="reason")
    return True


def move(
    session: Session,
    *,
    name: str,
    version_id: str,
    actor: str,
    expected_version: str | Unset | None = UNSET,
    reason: str | None = None,
    force: bool = False,
) -> AliasHistory:
    """Point alias `name` at `version_id` (creating the alias if needed) and append a history row.

    expected_version: the version the caller believes the alias points at (None: that it does not exist);
    a mismatch is a 409. A version that is not `accepted` needs force=True and a reason, both recorded.
    Workers auto-promoting pass the version the gate compared against, so they never clobber a human.
    """
    check_alias_name(name)
    forced = _forced(get_version(session, version_id, param="version"), force=force, reason=reason)
    alias = session.get(Alias, name)
    current = alias.model_version_id if alias is not None else None
    if expected_version is not UNSET and expected_version != current:
        raise _stale(name, expected_version, current)
    if current == version_id:  # already there: nothing moved, so nothing to record (nor to roll back)
        return history(session, name)[-1]
    if not _swap(session, name, current, version_id):
        raise _stale(name, current, "another version (moved concurrently)")
    return _record(
        session,
        name=name,
        action=AliasAction.PROMOTE,
        from_version=current,
        to_version=version_id,
        actor=actor,
        reason=reason,
        forced=forced,
    )


def history(session: Session, name: str) -> Sequence[AliasHistory]:
    """Every move of the alias, oldest first."""
    return session.scalars(
        select(AliasHistory).where(AliasHistory.alias_name == name).order_by(AliasHistory.seq)
    ).all()


def rollback_target(entries: Sequence[AliasHistory]) -> str | None:
    """The version held before the current one, treating history as a stack: a promotion pushes, a rollback
    pops. So promote A, B, C then rollback, rollback gives B then A (not B, C, B...)."""
    stack: list[str] = []
    for entry in entries:
        if entry.action == AliasAction.ROLLBACK:
            stack.pop()
        else:
            stack.append(entry.to_version_id)
    return stack[-2] if len(stack) >= 2 else None


def rollback(
    session: Session,
    *,
    name: str,
    actor: str,
    expected_version: str | Unset | None = UNSET,
    expected_target: str | Unset = UNSET,
    reason: str | None = None,
    force: bool = False,
) -> AliasHistory:
    """Move the alias back to the version it held before the current one (see rollback_target). That
    version may since have been rejected, or was itself forced there: the same rule as `move` holds.

    expected_target: the version the caller was shown as the rollback target; the history may have
    changed while the alias came back to `expected_version` (promote C, then B again), so a mismatch
    is a 409 too."""
    alias = get_alias(session, name)
    current = alias.model_version_id
    if expected_version is not UNSET and expected_version != current:
        raise _stale(name, expected_version, current)
    target = rollback_target(history(session, name))
    if expected_target is not UNSET and expected_target != target:
        raise Conflict(
            f"alias {name!r} would roll back to {target or 'nothing'}, not {expected_target}: "
            "its history changed",
            code="alias_conflict",
            param="expected_target",
        )
    if target is None:
        raise Conflict(f"alias {name!r} has no earlier version to roll back to", code="nothing_to_roll_back")
    forced = _forced(get_version(session, target, param="name"), force=force, reason=reason)
    if not _swap(session, name, current, target):
        raise _stale(name, current, "another version (moved concurrently)")
    return _record(
        session,
        name=name,
        action=AliasAction.ROLLBACK,
        from_version=current,
        to_version=target,
        actor=actor,
        reason=reason,
        forced=forced,
    )


def list_aliases(session: Session) -> Sequence[Alias]:
    return session.scalars(select(Alias).order_by(Alias.name)).all()


def history_page(
    session: Session, name: str, *, after: str | None, limit: int
) -> tuple[Sequence[AliasHistory], bool]:
    """A page of the alias's moves, newest first; `after` is a history entry id."""
    get_alias(session, name)
    after_seq = None
    if after is not None:
        after_seq = session.scalar(
            select(AliasHistory.seq).where(AliasHistory.id == after, AliasHistory.alias_name == name)
        )
        if after_seq is None:
            raise NotFound(f"no history entry {after!r} for {name}", code="history_not_found", param="after")
    stmt = select(AliasHistory).where(AliasHistory.alias_name == name)
    return paginate(session, stmt, AliasHistory.seq, after=after_seq, limit=limit)
