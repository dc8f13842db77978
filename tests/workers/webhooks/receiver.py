"""Real webhook receivers for tests: an HTTP server on 127.0.0.1 in a thread that records every POST
(headers and raw body) and answers the status codes it was told to, in order, then `default`; and a
raw one (`answering`) that sends bytes no well-behaved server does (a byte at a time, without end)."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: bytes
    at: float
    status: int  # what the receiver answered


class Receiver:
    def __init__(
        self,
        statuses: Iterable[int] = (),
        default: int = 200,
        delay: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.statuses = list(statuses)
        self.default = default
        self.delay = delay
        self.received: list[Received] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                with receiver.lock:
                    status = receiver.statuses.pop(0) if receiver.statuses else receiver.default
                    receiver.received.append(Received(headers, body, time.time(), status))
                if receiver.delay:
                    time.sleep(receiver.delay)
                self.send_response(status)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def ids(self) -> list[str]:
        with self.lock:
            return [r.headers["webhook-id"] for r in self.received]

    def wait_for(self, count: int, timeout: float = 60.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.received) >= count:
                    return list(self.received)
            time.sleep(0.05)
        raise AssertionError(f"{len(self.received)} of {count} deliveries arrived in {timeout} s")


@contextmanager
def receiving(*args: Any, **kwargs: Any) -> Iterator[Receiver]:
    receiver = Receiver(*args, **kwargs)
    receiver.thread.start()
    try:
        yield receiver
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()


class _RawServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    block_on_close = False  # a handler may still be trickling its answer when the test ends


@contextmanager
def answering(answer: Callable[[socket.socket], None]) -> Iterator[str]:
    """A receiver that reads each request's head and body, then lets `answer` write to the socket;
    yields its URL."""

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            request = self.request.makefile("rb")
            length = 0
            while (line := request.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            request.read(length)
            with suppress(OSError):  # the client gave up
                answer(self.request)

    server = _RawServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    finally:
        server.shutdown()
        server.server_close()
