"""The worker computes on the cores the API does not need (SDFT_WORKER_THREADS), set in each worker
process before any engine starts, and `sdft up` hands the setting to the worker it starts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from app.settings import Settings, default_worker_threads, get_settings
from workers.local_service import worker_env


def test_the_default_leaves_one_core_to_the_api() -> None:
    assert [default_worker_threads(cores) for cores in (1, 2, 16)] == [1, 1, 15]
    assert Settings().worker_threads == default_worker_threads() >= 1


@pytest.fixture()
def restored_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)
    get_settings.cache_clear()


def test_each_worker_process_sets_its_threads_from_the_setting(
    monkeypatch: pytest.MonkeyPatch, restored_threads: None
) -> None:
    from workers.tasks import set_worker_threads

    monkeypatch.setenv("SDFT_WORKER_THREADS", "2")
    get_settings.cache_clear()
    set_worker_threads()
    assert torch.get_num_threads() == 2


def test_sdft_up_passes_the_setting_to_its_worker(tmp_path: Path) -> None:
    env = worker_env(Settings(data_dir=tmp_path, worker_threads=3))
    assert env["SDFT_WORKER_THREADS"] == "3" and env["SDFT_DATA_DIR"] == str(tmp_path)
