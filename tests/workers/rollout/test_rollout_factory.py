"""Rollout settings (torch-free contract) and the backend factory's plain if/else."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from app.contracts.rollout_settings import RolloutSettings, default_engine, rollout_settings_from_env
from workers.models.loading import load_model, load_tokenizer
from workers.models.placement import default_placement
from workers.rollout import factory as factory_module
from workers.rollout.base import RolloutShape
from workers.rollout.factory import make_backend_factory, transformers_backend


def test_defaults_are_vllm_where_installed_synced_every_step() -> None:
    s = RolloutSettings()
    installed = importlib.util.find_spec("vllm") is not None
    assert s.backend == default_engine() == ("vllm" if installed else "transformers") and s.sync_every == 1
    assert s.engine_dtype(native_bf16=True) == "bfloat16"
    assert s.engine_dtype(native_bf16=False) == "float32"
    assert s.with_overrides({"dtype": "bfloat16"}).engine_dtype(native_bf16=False) == "bfloat16"
    assert make_backend_factory(RolloutSettings(backend="transformers")) is transformers_backend


def test_server_mode_needs_a_url_and_settings_are_validated() -> None:
    with pytest.raises(ValidationError, match="server_url"):
        RolloutSettings(backend="vllm-server")
    with pytest.raises(ValidationError, match="http"):
        RolloutSettings(backend="vllm-server", server_url="vllm:8000")
    for bad in ({"sync_every": 0}, {"gpu_memory_utilization": 1.5}, {"backend": "sglang"}, {"unknown": 1}):
        with pytest.raises(ValidationError):
            RolloutSettings.model_validate(bad)
    with pytest.raises(ValidationError):
        RolloutSettings(adapter_name_prefix="job 1/..")


def test_worker_settings_from_the_environment_and_per_job_overrides() -> None:
    env = {
        "SDFT_ROLLOUT_BACKEND": "vllm-server",
        "SDFT_ROLLOUT_SERVER_URL": "http://vllm:8000",
        "SDFT_ROLLOUT_SYNC_EVERY": "4",
        "SDFT_ROLLOUT_ENABLE_SLEEP_MODE": "true",
        "SDFT_ROLLOUT_MAX_MODEL_LEN": "",
        "UNRELATED": "x",
    }
    worker = rollout_settings_from_env(env)
    assert worker.backend == "vllm-server" and worker.sync_every == 4 and worker.enable_sleep_mode
    assert worker.max_model_len is None
    job = worker.with_overrides({"backend": "vllm", "adapter_name_prefix": "job-17"})
    assert job.backend == "vllm" and job.server_url == "http://vllm:8000" and job.sync_every == 4
    with pytest.raises(ValidationError):
        worker.with_overrides({"sync_every": -1})
    assert rollout_settings_from_env({}) == RolloutSettings()


def test_the_settings_contract_imports_without_torch() -> None:
    code = "import sys, app.contracts.rollout_settings; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


class _Recorder:
    def __init__(self, *args: Any, **kwargs: Any):
        self.args, self.kwargs = args, kwargs


def test_vllm_builds_the_colocated_engine_on_the_students_model_dir(
    monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path
) -> None:
    from workers.rollout import vllm_engine

    monkeypatch.setattr(vllm_engine, "VllmEngineBackend", _Recorder)
    settings = RolloutSettings(backend="vllm", sync_every=2)
    build = make_backend_factory(settings)
    assert build is not None
    student = load_model(tiny_model_dir, default_placement("cpu"))
    shape = RolloutShape(4, 100)
    backend: Any = build(student, load_tokenizer(tiny_model_dir), default_placement("cpu"), shape)
    assert isinstance(backend, _Recorder)
    assert backend.args == (tiny_model_dir, settings)
    assert backend.kwargs["student"] is student and str(backend.kwargs["device"]) == "cpu"
    assert backend.kwargs["shape"] == shape


def test_vllm_server_builds_the_http_client(monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path) -> None:
    from workers.rollout import vllm_server

    monkeypatch.setattr(vllm_server, "VllmServerBackend", _Recorder)
    settings = RolloutSettings(backend="vllm-server", server_url="http://127.0.0.1:9")
    build = make_backend_factory(settings)
    assert build is not None
    student = load_model(tiny_model_dir, default_placement("cpu"))
    backend: Any = build(
        student, load_tokenizer(tiny_model_dir), default_placement("cpu"), RolloutShape(4, 100)
    )
    assert isinstance(backend, _Recorder)
    assert backend.args == (settings,) and backend.kwargs == {"student": student}


def test_the_factory_module_does_not_import_vllm() -> None:
    assert factory_module.make_backend_factory is make_backend_factory
    code = "import sys, workers.rollout.factory; assert 'vllm' not in sys.modules, 'vllm imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
