"""One attempt's network side (workers/webhooks.py `post`) against real receivers on loopback addresses:
the receiver's name is resolved once and the POST goes to the address that was checked (DNS rebinding
is simulated by substituting the resolver), addresses that carry a private IPv4 address are refused as
it would be, and an attempt ends by its timeout however slowly the receiver answers, reading only the
start of a long answer. No database: `post` takes what a claimed delivery holds."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import ip_address
from typing import Any

import pytest

from app.webhooks.receivers import is_public
from app.webhooks.service import Attempt
from app.webhooks.signing import new_secret
from tests.workers.webhooks.receiver import answering, receiving
from workers.webhooks import RetryPolicy, post

LOOPBACK_ALLOWED = RetryPolicy(timeout_seconds=1.0, allow_private=True)
STRICT = RetryPolicy(timeout_seconds=1.0, allow_private=False)
NAME = "hooks.rebinding.test"
PUBLIC = "93.184.216.34"  # a public address, whose host the test plays on 127.0.0.2


def attempt_to(url: str) -> Attempt:
    return Attempt(
        delivery_id="whd_test",
        endpoint_id="wh_test",
        url=url,
        secret=new_secret(),
        event_id="msg_test",
        job_id=None,
        body=b'{"type":"test"}',
        number=1,
        event_created_at=int(time.time()),
    )


@dataclass
class Resolver:
    """What NAME resolves to: `answers[i]` at the i-th lookup, the last one from then on."""

    answers: list[str] = field(default_factory=list)
    lookups: int = 0


@pytest.fixture()
def dns(monkeypatch: pytest.MonkeyPatch) -> Resolver:
    """The system resolver, plus NAME; connecting to PUBLIC reaches 127.0.0.2, playing its host."""
    real = socket.getaddrinfo
    resolver = Resolver()

    def getaddrinfo(host: str, port: int, *args: Any, **kwargs: Any) -> Any:
        if host != NAME:
            return real("127.0.0.2" if host == PUBLIC else host, port, *args, **kwargs)
        resolver.lookups += 1
        address = resolver.answers[min(resolver.lookups, len(resolver.answers)) - 1]
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        return [(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return resolver


def test_the_name_is_resolved_once_and_the_post_goes_to_the_address_checked(dns: Resolver) -> None:
    # DNS rebinding: a public address when the worker checks the name, loopback on any later lookup.
    dns.answers = [PUBLIC, "127.0.0.1"]
    with (
        receiving(host="127.0.0.2") as public,
        receiving(host="127.0.0.1", port=public.port) as internal,
    ):
        assert post(attempt_to(f"http://{NAME}:{public.port}/hook"), STRICT) == (200, None)
    assert internal.received == []
    [received] = public.received
    assert received.headers["host"] == f"{NAME}:{public.port}"  # the name, although sent to the address
    assert dns.lookups == 1


@pytest.mark.parametrize("address", ["127.0.0.1", "64:ff9b::7f00:1", "::127.0.0.1", "2002:7f00:1::1"])
def test_a_name_resolving_to_an_address_that_reaches_loopback_is_refused(dns: Resolver, address: str) -> None:
    dns.answers = [address]
    with receiving() as receiver:
        assert post(attempt_to(f"http://{NAME}:{receiver.port}/hook"), STRICT) == (
            None,
            f"{NAME} resolves to a loopback, private or link-local address",
        )
        # The internal address is not told to the tenant who reads the delivery log.
        assert address not in post(attempt_to(f"http://{NAME}:{receiver.port}/hook"), STRICT)[1]
    assert receiver.received == []


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("93.184.216.34", True),
        ("2606:4700:4700::1111", True),
        ("64:ff9b::808:808", True),  # NAT64 of 8.8.8.8
        ("2002:808:808::1", True),  # 6to4 of 8.8.8.8
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),
        ("0.0.0.0", False),
        ("::1", False),
        ("fe80::1", False),
        ("fd00::1", False),
        # IPv6 forms that reach a private IPv4 address, which Python 3.11's is_global calls global.
        ("64:ff9b::7f00:1", False),
        ("64:ff9b::a9fe:a9fe", False),
        ("64:ff9b:1::a9fe:a9fe", False),
        ("2002:a9fe:a9fe::1", False),
        ("2002:7f00:1::1", False),
        ("::127.0.0.1", False),
        ("::ffff:127.0.0.1", False),
        ("::ffff:0:10.0.0.1", False),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", False),  # Teredo
    ],
)
def test_an_address_is_public_only_when_every_ipv4_address_it_carries_is(address: str, public: bool) -> None:
    assert is_public(ip_address(address)) is public


def trickling(answer: bytes, *, head: bytes = b"") -> Callable[[socket.socket], None]:
    """An answer sent `head` at once, then a byte every 0.1 s (4 s for 40 bytes)."""

    def send(connection: socket.socket) -> None:
        connection.sendall(head)
        for byte in answer:
            time.sleep(0.1)
            connection.sendall(bytes([byte]))

    return send


@pytest.mark.parametrize(
    ("answer", "outcome"),
    [
        (trickling(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"), (None, "Timeout")),
        # The status came in time: a body that never ends does not make a 2xx a failure to retry.
        (trickling(b"x" * 40, head=b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\n"), (200, None)),
    ],
    ids=["head", "body"],
)
def test_an_attempt_ends_by_its_timeout_however_slowly_the_receiver_answers(
    answer: Callable[[socket.socket], None], outcome: tuple[int | None, str | None]
) -> None:
    # Each byte comes long before a per-read timeout would fire; the attempt as a whole takes too long.
    with answering(answer) as url:
        started = time.monotonic()
        status, error = post(attempt_to(url), LOOPBACK_ALLOWED)
        took = time.monotonic() - started
    expected_status, expected_error = outcome
    assert status == expected_status
    assert error is None if expected_error is None else (error is not None and expected_error in error)
    # Over well before the claim lapses (timeout + HOLD_MARGIN_SECONDS) and the reaper sends it again.
    assert LOOPBACK_ALLOWED.timeout_seconds <= took < LOOPBACK_ALLOWED.timeout_seconds + 1


def test_a_slow_lookup_is_bounded_by_the_attempts_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    real = socket.getaddrinfo

    def slow(host: str, *args: Any, **kwargs: Any) -> Any:
        if host == NAME:
            time.sleep(2.5)
        return real("127.0.0.1" if host == NAME else host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", slow)
    started = time.monotonic()
    status, error = post(attempt_to(f"http://{NAME}/hook"), LOOPBACK_ALLOWED)
    assert status is None and error is not None and "took longer than 1 s" in error
    assert time.monotonic() - started < LOOPBACK_ALLOWED.timeout_seconds + 0.5


def test_a_name_with_no_address_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", lambda *args, **kwargs: [])
    assert post(attempt_to(f"http://{NAME}/hook"), STRICT) == (None, f"{NAME} resolves to no address")


def test_only_the_start_of_a_long_answer_is_read() -> None:
    def long_answer(connection: socket.socket) -> None:  # 20 MB over 3 s, then the connection closes
        connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n")
        for _ in range(300):
            connection.sendall(b"x" * 65536)
            time.sleep(0.01)

    with answering(long_answer) as url:
        started = time.monotonic()
        assert post(attempt_to(url), LOOPBACK_ALLOWED) == (200, None)
        assert time.monotonic() - started < LOOPBACK_ALLOWED.timeout_seconds
