"""The dashboard's session cookie, CSRF tokens and session secret (app.ui.session, app.ui.secret)."""

from __future__ import annotations

import stat
import threading
from pathlib import Path

import pytest
from pydantic import SecretStr

from app.settings import Settings
from app.ui.secret import SECRET_FILE_NAME, load_or_create_secret, session_secret
from app.ui.session import SESSION_MAX_AGE_SECONDS, BrowserSession, SessionCodec, new_session
from app.ui.views.signin import safe_next

SECRET = b"s" * 32
TOKEN = "sdft_" + "x" * 43
NOW = 1_750_000_000


def test_a_sealed_session_opens_to_the_same_session_and_hides_the_token() -> None:
    codec = SessionCodec(SECRET)
    session = new_session(TOKEN)
    cookie = codec.seal(session, now=NOW)
    assert TOKEN not in cookie and "x" * 10 not in cookie
    assert codec.open(cookie, now=NOW + 60) == session


def test_a_tampered_foreign_or_expired_cookie_opens_to_nothing() -> None:
    codec = SessionCodec(SECRET)
    cookie = codec.seal(new_session(TOKEN), now=NOW)
    flipped = cookie[:20] + ("A" if cookie[20] != "A" else "B") + cookie[21:]
    assert codec.open(flipped, now=NOW) is None
    assert SessionCodec(b"t" * 32).open(cookie, now=NOW) is None
    assert codec.open(cookie, now=NOW + SESSION_MAX_AGE_SECONDS + 1) is None
    assert codec.open("", now=NOW) is None
    assert codec.open("not a cookie", now=NOW) is None


def test_a_session_without_a_token_round_trips() -> None:
    codec = SessionCodec(SECRET)
    anonymous = new_session()
    assert codec.open(codec.seal(anonymous, now=NOW), now=NOW) == BrowserSession(anonymous.nonce, None)


def test_csrf_tokens_belong_to_one_session() -> None:
    codec = SessionCodec(SECRET)
    mine, theirs = new_session(TOKEN), new_session(TOKEN)
    token = codec.csrf_token(mine)
    assert codec.csrf_ok(mine, token)
    assert not codec.csrf_ok(theirs, token)
    assert not codec.csrf_ok(mine, None)
    assert not codec.csrf_ok(mine, token[:-1])
    assert not SessionCodec(b"t" * 32).csrf_ok(mine, token)
    # Signing in draws a new nonce, so a token from before sign-in does not carry over.
    assert not codec.csrf_ok(new_session(TOKEN), codec.csrf_token(new_session()))


def test_a_short_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        SessionCodec(b"short")


def test_the_secret_file_is_created_once_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "data" / SECRET_FILE_NAME
    first = load_or_create_secret(path)
    assert len(first) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_secret(path) == first
    assert [p.name for p in path.parent.iterdir()] == [SECRET_FILE_NAME], "no candidate file left behind"


def test_processes_starting_together_agree_on_one_secret(tmp_path: Path) -> None:
    path = tmp_path / SECRET_FILE_NAME
    results: list[bytes] = []
    threads = [threading.Thread(target=lambda: results.append(load_or_create_secret(path))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(results)) == 1 and results[0] == path.read_bytes().strip()


def test_a_configured_secret_wins_over_the_file(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, ui_session_secret=SecretStr("configured-secret-of-some-length"))
    assert session_secret(settings) == b"configured-secret-of-some-length"
    assert not (tmp_path / SECRET_FILE_NAME).exists()
    derived = Settings(data_dir=tmp_path)
    assert session_secret(derived) == (tmp_path / SECRET_FILE_NAME).read_bytes().strip()


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/ui/models/mv_1", "/ui/models/mv_1"),
        ("/ui/jobs?status=running", "/ui/jobs?status=running"),
        ("//evil.example/ui/", "/ui/jobs"),
        ("https://evil.example/ui/jobs", "/ui/jobs"),
        ("/ui/\\evil", "/ui/jobs"),
        ("/v1/jobs", "/ui/jobs"),
        ("/ui/sign-in", "/ui/jobs"),
    ],
)
def test_sign_in_returns_only_to_dashboard_pages(target: str, expected: str) -> None:
    assert safe_next(target) == expected
