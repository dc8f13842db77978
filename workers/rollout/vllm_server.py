"""Rollouts from an external OpenAI-compatible `vllm serve` (the docker-compose shape). No vllm import.

The server must be started with dynamic LoRA enabled, e.g.::

    VLLM_ALLOW_RUNTIME_LORA_UPDATING=True vllm serve /models/base --enable-lora --max-lora-rank 64 \\
        --max-loras 2 --max-cpu-loras 2 --logprobs-mode processed_logprobs --generation-config vllm

Every `sync_every` optimizer steps the student's adapter is written to `server_adapter_dir` (a
directory the server can read), loaded with `POST /v1/load_lora_adapter` under a job-scoped name
(`<adapter_name_prefix>-<run token>-step<N>`), and the previous one is unloaded with
`POST /v1/unload_lora_adapter`. Each completion request names the adapter as its `model`.

Prompts go in as token ids, and each sampled rollout is its own request with its own seed
(`sample_seed`, shared with the colocated engine), sent concurrently. Connection errors, timeouts
and 502/503/504 answers are retried `server_retries` times with backoff; after that the stage fails
with `RolloutServerError`, which names the server and the last error. The training loop writes
checkpoints atomically, so the last one stays intact and the stage can be resumed.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import torch
from peft import PeftModel

from app.contracts.rollout_settings import RolloutSettings
from workers.rollout.base import Completion, SamplingParams, StopCheck
from workers.rollout.vllm_engine import sample_seed

RETRY_STATUS = frozenset({502, 503, 504})


class RolloutServerError(RuntimeError):
    """The rollout server could not be reached, or refused a request; the stage cannot go on."""


def completion_request(
    model: str, prompt: Sequence[int], params: SamplingParams, prompt_index: int, sample_index: int
) -> dict[str, Any]:
    """The body of one `/v1/completions` request: token ids in, token ids and logprobs out.

    Every sampling parameter is stated, so the server's defaults (from the model's
    generation_config) never apply.
    """
    return {
        "model": model,
        "prompt": [int(t) for t in prompt],
        "max_tokens": params.max_new_tokens,
        "temperature": params.temperature,
        "top_p": 1.0,
        "top_k": 0,
        "min_p": 0.0,
        "repetition_penalty": 1.0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "n": 1,
        "seed": None if params.greedy else sample_seed(params.seed, prompt_index, sample_index),
        "logprobs": 0,
        "stop_token_ids": list(params.stop_token_ids),
        "skip_special_tokens": False,
        "include_stop_str_in_output": True,
        "return_token_ids": True,
        "add_special_tokens": False,
    }


def parse_completion(body: dict[str, Any], stop_token_ids: Sequence[int]) -> Completion:
    """One choice of a `/v1/completions` answer as a `Completion` (the stop token kept)."""
    try:
        choice = body["choices"][0]
        ids = tuple(int(t) for t in choice["token_ids"])
        logprobs = tuple(float(x) for x in choice["logprobs"]["token_logprobs"])
        reason = choice["finish_reason"]
    except (KeyError, IndexError, TypeError) as exc:
        raise RolloutServerError(
            f"the rollout server's answer lacks token_ids or logprobs ({exc!r}); it must be a vLLM "
            "OpenAI-compatible server that supports return_token_ids"
        ) from exc
    if len(logprobs) != len(ids):
        raise RolloutServerError(
            f"the rollout server returned {len(ids)} tokens but {len(logprobs)} logprobs"
        )
    if reason not in ("stop", "length"):
        raise RolloutServerError(f"the rollout server ended a completion with finish_reason={reason!r}")
    if reason == "stop" and ids and ids[-1] not in set(stop_token_ids):
        # Stopped by a stop token that the server did not echo: keep it, like the other backends,
        # without a log-probability (the server gave none; a made-up one would bias the
        # importance weight), so `logprobs` is one shorter than `token_ids`.
        stop = choice.get("stop_reason")
        if isinstance(stop, int):
            ids = (*ids, stop)
    return Completion(ids, logprobs, reason)


class VllmServerBackend:
    name = "vllm-server"
    exact_numerics = False

    def __init__(
        self,
        settings: RolloutSettings,
        *,
        student: torch.nn.Module | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if settings.server_url is None:
            raise ValueError("the vllm-server rollout backend needs server_url")
        if student is not None and not isinstance(student, PeftModel):
            raise ValueError(
                "the vllm-server rollout backend syncs LoRA adapters only; for full fine-tuning use the "
                "colocated 'vllm' backend or 'transformers', or train a LoRA adapter (lora_rank)"
            )
        self.settings = settings
        self.student = student
        self.url = settings.server_url.rstrip("/")
        self._sleep = sleep
        self.client = httpx.Client(base_url=self.url, timeout=settings.server_timeout_s, transport=transport)
        self._pool = ThreadPoolExecutor(max_workers=settings.server_max_concurrency)
        self._run_token = uuid.uuid4().hex[:8]
        root = Path(settings.server_adapter_dir) if settings.server_adapter_dir else None
        self._own_root = root is None
        self.adapter_root = Path(tempfile.mkdtemp(prefix="sdft-adapters-")) if root is None else root
        self._adapter: str | None = None
        self._adapter_dir: Path | None = None
        self._synced_step: int | None = None
        self.syncs = 0
        try:
            self.model = settings.server_model or self._served_model()
        except BaseException:
            self.close()
            raise

    # -- HTTP with bounded retries ------------------------------------------------------------

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        attempts = self.settings.server_retries + 1
        last: str = ""
        for attempt in range(attempts):
            if attempt:
                self._sleep(min(0.5 * 2 ** (attempt - 1), 10.0))
            try:
                response = self.client.request(method, path, json=body)
            except httpx.TransportError as exc:  # connection refused/reset, timeouts
                last = f"{type(exc).__name__}: {exc}"
                continue
            if response.status_code in RETRY_STATUS:
                last = f"HTTP {response.status_code}: {response.text[:200]}"
                continue
            return response
        raise RolloutServerError(
            f"the vLLM rollout server at {self.url} did not answer {method} {path} after {attempts} "
            f"attempt(s) (last error: {last}); the stage stops here and keeps its last checkpoint"
        )

    def _fail(self, what: str, response: httpx.Response) -> RolloutServerError:
        return RolloutServerError(
            f"the vLLM rollout server at {self.url} refused to {what}: HTTP {response.status_code} "
            f"{response.text[:500]}"
        )

    def _served_model(self) -> str:
        response = self._request("GET", "/v1/models")
        if response.status_code != 200:
            raise self._fail("list its models", response)
        data = response.json().get("data") or []
        bases = [m["id"] for m in data if not m.get("parent")]
        if not bases:
            raise RolloutServerError(f"the vLLM rollout server at {self.url} serves no model")
        return str(bases[0])

    # -- adapters ---------------------------------------------------------------------------------

    def sync_weights(self, step: int) -> bool:
        if self.student is None:
            return False
        if self._synced_step is not None and 0 <= step - self._synced_step < self.settings.sync_every:
            return self._synced_step == step
        assert isinstance(self.student, PeftModel)
        name = f"{self.settings.adapter_name_prefix}-{self._run_token}-step{step}"
        path = self.adapter_root / name
        self.student.save_pretrained(str(path), safe_serialization=True)
        response = self._request("POST", "/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(path)})
        # A retried load may find its first attempt already done.
        if response.status_code != 200 and "already been loaded" not in response.text:
            shutil.rmtree(path, ignore_errors=True)
            raise self._fail(f"load the adapter {name} from {path}", response)
        previous, previous_dir = self._adapter, self._adapter_dir
        self._adapter, self._adapter_dir = name, path
        self._synced_step = step
        self.syncs += 1
        if previous is not None:
            self._unload(previous)
        if previous_dir is not None:
            shutil.rmtree(previous_dir, ignore_errors=True)
        return True

    def _unload(self, name: str) -> None:
        response = self._request("POST", "/v1/unload_lora_adapter", {"lora_name": name})
        if response.status_code not in (200, 404):  # 404: already gone (e.g. a retried unload)
            raise self._fail(f"unload the adapter {name}", response)

    # -- generation --------------------------------------------------------------------------------

    def _complete(self, body: dict[str, Any], stop_token_ids: Sequence[int]) -> Completion:
        response = self._request("POST", "/v1/completions", body)
        if response.status_code != 200:
            raise self._fail("complete a rollout", response)
        return parse_completion(response.json(), stop_token_ids)

    def generate(
        self, prompts: Sequence[Sequence[int]], params: SamplingParams, should_stop: StopCheck | None = None
    ) -> list[list[Completion]]:
        model = self._adapter or self.model
        bodies = [
            completion_request(model, prompt, params, i, j)
            for i, prompt in enumerate(prompts)
            for j in range(params.num_samples)
        ]
        completions = list(self._pool.map(lambda b: self._complete(b, params.stop_token_ids), bodies))
        n = params.num_samples
        return [completions[i * n : (i + 1) * n] for i in range(len(prompts))]

    def close(self) -> None:
        """Unload this run's adapter (best effort: the server may be gone) and free local state."""
        if self._adapter is not None:
            with contextlib.suppress(httpx.HTTPError):
                self.client.post("/v1/unload_lora_adapter", json={"lora_name": self._adapter}, timeout=10.0)
            self._adapter = None
        if self._adapter_dir is not None:
            shutil.rmtree(self._adapter_dir, ignore_errors=True)
            self._adapter_dir = None
        if self._own_root:
            shutil.rmtree(self.adapter_root, ignore_errors=True)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()
