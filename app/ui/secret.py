"""The dashboard's session secret: SDFT_UI_SESSION_SECRET, else a random one kept under the data dir.

Every API process must use the same secret (a cookie sealed by one is opened by another), so the file
is created once, atomically: each process writes its candidate aside and links it into place; the
first link wins and everyone reads the winner."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from app.settings import Settings

SECRET_FILE_NAME = "ui-session.key"


def session_secret(settings: Settings) -> bytes:
    if settings.ui_session_secret is not None:
        return settings.ui_session_secret.get_secret_value().encode()
    return load_or_create_secret(settings.data_dir / SECRET_FILE_NAME)


def load_or_create_secret(path: Path) -> bytes:
    """The secret in `path` (mode 600), created on first use."""
    with contextlib.suppress(FileNotFoundError):
        existing = path.read_bytes().strip()
        if existing:
            return existing
    path.parent.mkdir(parents=True, exist_ok=True)
    candidate = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(32) + "\n")
    try:
        os.link(candidate, path)  # fails if another process linked its secret first: use that one
    except FileExistsError:
        pass
    finally:
        with contextlib.suppress(FileNotFoundError):
            candidate.unlink()
    return path.read_bytes().strip()
