from __future__ import annotations

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, JSONDoc


class ApiToken(Base):
    __tablename__ = "api_token"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    # sha256 of the secret: a leaked database does not leak usable tokens.
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    # The team the token acts for: files, suites and jobs belong to the creating token's team.
    team: Mapped[str] = mapped_column(String(64), default="default", server_default="default")
    # The secret's first characters, to tell tokens apart in listings without storing the secret.
    prefix: Mapped[str | None] = mapped_column(String(16))
    scopes: Mapped[list[str]] = mapped_column(JSONDoc)
    created_at: Mapped[int]
    revoked_at: Mapped[int | None]
    # Dashboard sessions signed in with this token carry the value they were signed in under; signing
    # out adds one, so a copy of any earlier session cookie is refused (app.ui.auth).
    ui_session_epoch: Mapped[int] = mapped_column(default=0, server_default="0")
