"""A minimal asyncio HTTP/1.1 client for load generation: keep-alive connections, Content-Length bodies.

httpx's async pool costs milliseconds of client CPU per request and slows down sharply with hundreds
of requests in flight; on a 2-core machine that shares its cores with the server, the client then
measures itself. This one parses only what the API sends (status line, headers, a sized body).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

# What a request through RawClient can fail with: refused or reset connections, a reply cut short,
# the per-request timeout.
TRANSPORT_ERRORS = (OSError, asyncio.IncompleteReadError, TimeoutError)


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class RawClient:
    """Requests to one host; a connection is reused once its previous reply was read in full."""

    def __init__(self, base_url: str, headers: dict[str, str], timeout: float = 60.0) -> None:
        parts = urlsplit(base_url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.headers = {"Host": f"{self.host}:{self.port}", **headers}
        self.timeout = timeout
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def get(self, path: str) -> Reply:
        return await self.request("GET", path)

    async def post(self, path: str, body: Any, headers: dict[str, str] | None = None) -> Reply:
        return await self.request("POST", path, json.dumps(body).encode(), headers)

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> Reply:
        return await asyncio.wait_for(self._exchange(method, path, body, headers or {}), self.timeout)

    async def _exchange(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> Reply:
        while self._idle:
            reader, writer = self._idle.pop()
            try:
                return await self._on(reader, writer, method, path, body, headers)
            except (ConnectionError, asyncio.IncompleteReadError) as exc:
                # The server closed this idle keep-alive connection (uvicorn: after 5 s); a request
                # that got no reply byte at all was not processed, so resending it is what browsers
                # and httpx do too.
                if isinstance(exc, asyncio.IncompleteReadError) and exc.partial:
                    raise
        reader, writer = await asyncio.open_connection(self.host, self.port)
        return await self._on(reader, writer, method, path, body, headers)

    async def _on(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        method: str,
        path: str,
        body: bytes,
        headers: dict[str, str],
    ) -> Reply:
        try:
            lines = [f"{method} {path} HTTP/1.1"]
            all_headers = {**self.headers, **headers}
            if body:
                all_headers |= {"Content-Type": "application/json", "Content-Length": str(len(body))}
            lines += [f"{name}: {value}" for name, value in all_headers.items()]
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
            reply = await _read_reply(reader)
        except BaseException:
            writer.close()
            raise
        if reply.headers.get("connection", "").lower() == "close":
            writer.close()
        else:
            self._idle.append((reader, writer))
        return reply

    async def close(self) -> None:
        for _reader, writer in self._idle:
            writer.close()
        self._idle.clear()


async def _read_reply(reader: asyncio.StreamReader) -> Reply:
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    status = int(status_line.split(" ", 2)[1])
    headers = {}
    for line in header_lines:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if "content-length" not in headers:
        raise ValueError(f"reply without Content-Length ({status}); this client reads sized bodies only")
    body = await reader.readexactly(int(headers["content-length"]))
    return Reply(status, headers, body)
