"""Shared fixtures: tiny models built in code (never downloaded), small demonstration sets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def pytest_configure(config: pytest.Config) -> None:
    # Tiny models on 2 cores: one intra-op thread avoids oversubscription when tests run beside
    # other processes, and keeps float results identical run to run.
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from workers.models.tiny import write_tiny_model_dir

    return write_tiny_model_dir(tmp_path_factory.mktemp("tiny-model"), seed=0)


def arithmetic_rows(n: int = 6) -> str:
    lines = [
        json.dumps({"prompt": f"What is {i} plus {i}?", "demonstration": f"{i} plus {i} is {2 * i}."})
        for i in range(n)
    ]
    return "\n".join(lines) + "\n"


@pytest.fixture()
def tiny_rows() -> list:
    from app.contracts.demonstrations import parse_demonstrations

    return parse_demonstrations(arithmetic_rows())
