"""The dashboard's browser session: a sealed cookie and the CSRF token derived from it.

The cookie holds the pasted API token encrypted and authenticated (Fernet: AES-CBC + HMAC-SHA256) under
a key derived from the session secret, so it is neither readable nor forgeable; it is HTTP-only,
SameSite=Strict and scoped to /ui, so the API under /v1 never sees it. The token inside is authenticated
again on every request (app.ui.auth), so a revoked token is signed out at its next request; a session
also expires on its own after SESSION_MAX_AGE_SECONDS, and signing out ends every session of that token
(its epoch moves on), so a copy of the cookie taken before is refused.

Each session (signed in or not: the sign-in form is protected too) has a random nonce; its CSRF token
is an HMAC of that nonce, checked on every POST. A new nonce is drawn at sign-in, so a token planted
before sign-in is worthless after it."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

from cryptography.fernet import Fernet, InvalidToken

SESSION_COOKIE = "sdft_ui_session"
COOKIE_PATH = "/ui"
SESSION_MAX_AGE_SECONDS = 12 * 3600
CSRF_FIELD = "csrf_token"


@dataclass(frozen=True)
class BrowserSession:
    nonce: str
    token: str | None  # the API token the user pasted; None until sign-in
    epoch: int = 0  # the token's ui_session_epoch at sign-in: signing out moves it on


def new_session(token: str | None = None, epoch: int = 0) -> BrowserSession:
    return BrowserSession(nonce=secrets.token_urlsafe(18), token=token, epoch=epoch)


def _derive(secret: bytes, purpose: bytes) -> bytes:
    """A 32-byte key per purpose, so the cookie key and the CSRF key are independent."""
    return hmac.new(secret, b"sdft-ui:" + purpose, hashlib.sha256).digest()


class SessionCodec:
    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("the dashboard's session secret needs at least 16 bytes")
        self._fernet = Fernet(base64.urlsafe_b64encode(_derive(secret, b"session-cookie")))
        self._csrf_key = _derive(secret, b"csrf")

    def seal(self, session: BrowserSession, *, now: int | None = None) -> str:
        fields = {"n": session.nonce, "t": session.token, "e": session.epoch}
        payload = json.dumps(fields, separators=(",", ":")).encode()
        issued = int(time.time()) if now is None else now
        return self._fernet.encrypt_at_time(payload, issued).decode()

    def open(self, cookie: str | None, *, now: int | None = None) -> BrowserSession | None:
        """The session in `cookie`; None when it is missing, tampered with, sealed under another secret
        or older than SESSION_MAX_AGE_SECONDS."""
        if not cookie:
            return None
        at = int(time.time()) if now is None else now
        try:
            payload = json.loads(self._fernet.decrypt_at_time(cookie.encode(), SESSION_MAX_AGE_SECONDS, at))
        except (InvalidToken, ValueError, UnicodeError):
            return None
        nonce, token, epoch = payload.get("n"), payload.get("t"), payload.get("e", 0)
        if not isinstance(nonce, str) or not (token is None or isinstance(token, str)):
            return None
        if not isinstance(epoch, int) or isinstance(epoch, bool):
            return None
        return BrowserSession(nonce=nonce, token=token, epoch=epoch)

    def csrf_token(self, session: BrowserSession) -> str:
        return hmac.new(self._csrf_key, session.nonce.encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, session: BrowserSession, submitted: object) -> bool:
        return isinstance(submitted, str) and hmac.compare_digest(self.csrf_token(session), submitted)
