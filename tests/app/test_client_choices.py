"""The `sdft` client spells the server's enums as literals, so that parsing a command never imports the
server stack; this keeps each spelling equal to the one place it is defined."""

from __future__ import annotations

import argparse

from app.auth.service import Scope
from app.client import add_client_commands
from app.files.service import FilePurpose
from app.jobs.router import MetricsFormat
from app.webhooks.schemas import EventType


def _choices(parser: argparse.ArgumentParser, path: list[str], dest: str) -> list[str]:
    for name in path:
        [subparsers] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        parser = subparsers.choices[name]
    [action] = [a for a in parser._actions if a.dest == dest]
    return list(action.choices or [])


def test_the_clients_choices_are_the_servers_enums() -> None:
    parser = argparse.ArgumentParser(prog="sdft")
    add_client_commands(parser.add_subparsers(dest="command", required=True))
    assert _choices(parser, ["tokens", "create"], "scope") == list(Scope)
    assert _choices(parser, ["files", "upload"], "purpose") == list(FilePurpose)
    assert _choices(parser, ["files", "list"], "purpose") == list(FilePurpose)
    assert _choices(parser, ["jobs", "metrics"], "format") == list(MetricsFormat)
    assert _choices(parser, ["webhooks", "create"], "event") == list(EventType)
