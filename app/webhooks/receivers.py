"""Where a webhook URL's POSTs go, and which addresses they may go to. The API checks a URL with these
when an endpoint is created; the worker (workers/webhooks.py) uses the same ones to send, so a URL
accepted here is one the worker can send to, and the two never judge an address differently."""

from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network

import httpx

DEFAULT_PORTS = {"http": 80, "https": 443}
# A DNS label as host names use them (underscores tolerated: some internal names carry them).
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
# A last label that is a number makes the host an IPv4 address in another notation (`2130706433`,
# `0177.0.0.1`, `127.1`, `0x7f.1`), which resolvers read as an address, not a name.
_NUMBER = re.compile(r"[0-9]+|0x[0-9a-f]*")
# IPv6 prefixes whose last 32 bits are the IPv4 address a packet reaches: IPv4-compatible, IPv4-mapped,
# IPv4-translated (SIIT) and NAT64's well-known prefix. Python's `is_global` judges only the prefix.
_IPV4_IN_LAST_32_BITS = [ip_network(n) for n in ("::/96", "::ffff:0:0/96", "::ffff:0:0:0/96", "64:ff9b::/96")]
# Not globally reachable although Python 3.11's `is_global` says so: NAT64's local-use prefix (RFC 8215).
_NOT_GLOBAL = [ip_network("64:ff9b:1::/48")]


@dataclass(frozen=True)
class Receiver:
    """A webhook URL taken apart as it is sent: `host` (lowercase ASCII, IDNA-encoded; an IPv6 address
    without brackets) is what is resolved and what TLS verifies; `target` is the percent-encoded path
    and query."""

    scheme: str
    host: str
    port: int
    target: bytes

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"


def parse_receiver(url: str) -> Receiver:
    """The receiver of an http(s) URL; ValueError saying what makes it unusable."""
    if any(ch.isspace() for ch in url):
        raise ValueError("it contains whitespace")
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise ValueError(str(exc)) from None
    if parsed.scheme not in DEFAULT_PORTS:
        raise ValueError("it is not an http(s) URL")
    if parsed.userinfo or parsed.fragment:
        raise ValueError("it may not carry credentials or a fragment")
    port = DEFAULT_PORTS[parsed.scheme] if parsed.port is None else parsed.port
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is not between 1 and 65535")
    host = parsed.raw_host.decode("ascii")
    problem = _host_problem(host)
    if problem is not None:
        raise ValueError(problem)
    return Receiver(scheme=parsed.scheme, host=host, port=port, target=parsed.raw_path)


def _host_problem(host: str) -> str | None:
    """Why `host` is neither an IP address nor a host name, or None."""
    if not host:
        return "it has no host"
    try:
        ip_address(host)
        return None
    except ValueError:
        pass
    labels = host.removesuffix(".").split(".")
    if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        return f"{host!r} is not a valid host name"
    if _NUMBER.fullmatch(labels[-1]):
        return f"{host!r} is an IP address in a non-standard form; write IPv4 addresses as a.b.c.d"
    return None


def is_public(address: IPv4Address | IPv6Address) -> bool:
    """Whether webhooks may be sent to `address`: it is globally routable, and so is every IPv4 address
    it carries (an IPv6 address of NAT64, 6to4, Teredo or the IPv4-compatible forms reaches that one)."""
    return all(
        candidate.is_global and not any(candidate in network for network in _NOT_GLOBAL)
        for candidate in (address, *_embedded_ipv4(address))
    )


def _embedded_ipv4(address: IPv4Address | IPv6Address) -> list[IPv4Address]:
    if isinstance(address, IPv4Address):
        return []
    found = [a for a in (address.sixtofour, *(address.teredo or ())) if a is not None]
    if any(address in network for network in _IPV4_IN_LAST_32_BITS):
        found.append(IPv4Address(int(address) & 0xFFFFFFFF))
    return found


def is_public_host(host: str) -> bool:
    """False for a receiver's host (as parsed) that is `localhost` or an address `is_public` refuses;
    True for other names, whose addresses the worker checks each time it resolves them."""
    name = host.removesuffix(".")
    if name == "localhost" or name.endswith(".localhost"):
        return False
    try:
        return is_public(ip_address(name))
    except ValueError:
        return True
