"""The `sdft` client spells the server's enums and limits as literals, so that parsing a command never
imports the server stack; this keeps each spelling equal to the one place it is defined."""

from __future__ import annotations

import argparse

import pytest

import app.client as client
from app.auth.service import Scope
from app.client import add_client_commands
from app.files.service import FilePurpose
from app.jobs.router import MetricsFormat
from app.jobs.states import JobStatus
from app.pagination import MAX_LIMIT
from app.settings import Settings
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


def test_the_clients_limits_are_the_servers() -> None:
    assert client.MAX_PAGE_LIMIT == MAX_LIMIT
    assert client.JOB_SUCCEEDED == JobStatus.SUCCEEDED
    # --follow takes a stream silent for three keep-alive periods for dead
    assert Settings.model_fields["sse_heartbeat_seconds"].default == client.SSE_HEARTBEAT_SECONDS
    assert client.FOLLOW_READ_TIMEOUT_SECONDS == 3 * client.SSE_HEARTBEAT_SECONDS


@pytest.mark.parametrize(
    "path",
    [
        ["files", "list"],
        ["jobs", "list"],
        ["jobs", "events"],
        ["models", "list"],
        ["webhooks", "list"],
        ["webhooks", "deliveries"],
    ],
)
def test_every_limit_takes_only_the_page_sizes_the_api_accepts(path: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="sdft")
    add_client_commands(parser.add_subparsers(dest="command", required=True))
    for name in path:
        [subparsers] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        parser = subparsers.choices[name]
    [limit] = [a for a in parser._actions if a.dest == "limit"]
    assert limit.type is client.page_limit
