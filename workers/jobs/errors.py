"""How a job ends badly: `JobFailed` ends it with a reason and no retry; `Transient` asks for a retry."""

from __future__ import annotations


class JobFailed(Exception):
    """Bad data, a bad config, out of memory, a teacher that is not ready: retrying would not help."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param

    def to_error(self) -> dict[str, str | None]:
        return {"code": self.code, "message": self.message, "param": self.param}


class Transient(Exception):
    """A broker or storage hiccup: the task is retried with backoff a bounded number of times."""


class LeaseLost(Exception):
    """Another worker took the job over (ours expired): stop without touching it."""
