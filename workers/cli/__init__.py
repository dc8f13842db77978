"""The `sdft` command: one module per command group, each registering its own flags beside its
handler. Heavy imports (torch, transformers) happen inside the commands that need them, so
`sdft --help` and the HTTP client commands start fast and work in the API image."""

from __future__ import annotations

import argparse
import sys

from workers.cli import evaluate, experiment, service, train


def build_parser() -> argparse.ArgumentParser:
    from app.client import add_client_commands

    parser = argparse.ArgumentParser(prog="sdft", description="Self-Distillation Fine-Tuning service")
    sub = parser.add_subparsers(dest="command", required=True)
    client = add_client_commands(sub)
    service.register(sub, client["models"])
    train.register(sub)
    evaluate.register(sub)
    experiment.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from app.client import run_command

    return run_command(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
