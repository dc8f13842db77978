"""Job statuses as a transition table. Pure Python: no database, no HTTP.

    validating -> queued -> running -> evaluating -> succeeded | rejected
                                  ^          |
                                  +----------+   (the next skill stage trains after the previous one's gate)

Any non-terminal status may go to `failed` or `cancelled`. `rejected` means the gate said no; the
candidate version is kept for inspection. A status with no outgoing edges is terminal.
"""

from __future__ import annotations

from enum import StrEnum

from app.errors import Conflict


class JobStatus(StrEnum):
    VALIDATING = "validating"
    QUEUED = "queued"
    RUNNING = "running"
    EVALUATING = "evaluating"
    SUCCEEDED = "succeeded"
    REJECTED = "rejected"
    FAILED = "failed"
    CANCELLED = "cancelled"


_STOP = frozenset({JobStatus.FAILED, JobStatus.CANCELLED})

ALLOWED_TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.VALIDATING: frozenset({JobStatus.QUEUED}) | _STOP,
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING}) | _STOP,
    JobStatus.RUNNING: frozenset({JobStatus.EVALUATING}) | _STOP,
    JobStatus.EVALUATING: frozenset({JobStatus.RUNNING, JobStatus.SUCCEEDED, JobStatus.REJECTED}) | _STOP,
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.REJECTED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}

TERMINAL_STATUSES = frozenset(s for s, targets in ALLOWED_TRANSITIONS.items() if not targets)


class InvalidTransition(Conflict):
    def __init__(self, from_status: JobStatus, to_status: JobStatus) -> None:
        super().__init__(
            f"a job cannot go from {from_status} to {to_status}", code="invalid_transition", param="status"
        )
        self.from_status = from_status
        self.to_status = to_status


def can_transition(from_status: JobStatus, to_status: JobStatus) -> bool:
    return to_status in ALLOWED_TRANSITIONS[from_status]


def check_transition(from_status: JobStatus, to_status: JobStatus) -> None:
    if not can_transition(from_status, to_status):
        raise InvalidTransition(from_status, to_status)


def is_terminal(status: JobStatus) -> bool:
    return status in TERMINAL_STATUSES
