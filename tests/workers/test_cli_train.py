"""`sdft train` end to end on the tiny model, and its all-at-once error report."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from workers.cli import main


def test_train_writes_a_model_and_reports_progress(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "demos.jsonl"
    data.write_text(
        "".join(json.dumps({"prompt": f"Say {w}.", "demonstration": w}) + "\n" for w in ["yes", "no", "ok"])
    )
    config = tmp_path / "stage.yaml"
    config.write_text("method: sdft\nbatch_size: 2\nmax_new_tokens: 8\ncheckpoint_every: 1\n")
    code = main(["train", "--data", str(data), "--base", str(tiny_model_dir), "--out", str(tmp_path / "out"),
                 "--max-steps", "2", "--lora", "--config", str(config),
                 "--backend", "transformers"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "rollouts: transformers" in captured.out
    assert "kl=" in captured.err and "rollout_len=" in captured.err and "2/2" in captured.err
    assert f"model: {tmp_path / 'out' / 'final'}" in captured.out
    meta = json.loads((tmp_path / "out" / "final" / "meta.json").read_text())
    assert meta["config"]["lora_rank"] == 16 and meta["steps"] == 2
    assert sorted(p.name for p in (tmp_path / "out" / "checkpoints").iterdir()) == [
        "step-000001",
        "step-000002",
    ]


def test_bad_config_and_data_are_reported_together_before_any_compute(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "demos.jsonl"
    data.write_text(
        '{"prompt": "ok", "demonstration": "ok"}\n{"prompt": "", "demonstration": "x"}\nnot json\n'
    )
    config = tmp_path / "stage.json"
    config.write_text(json.dumps({"learning_rate": 0, "bogus": 1}))
    missing = str(tmp_path / "missing")
    code = main(["train", "--data", str(data), "--base", missing, "--out", str(tmp_path / "o"),
                 "--config", str(config)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert "5 problem(s), nothing was run" in err
    for expected in ["config: learning_rate:", "config: bogus: unknown key", "data: line 2: prompt:",
                     "data: line 3: row: not valid JSON", "base:"]:  # fmt: skip
        assert expected in err
    assert not (tmp_path / "o").exists()


def test_bad_yaml_and_an_unknown_grader_are_problems_not_tracebacks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "demos.jsonl"
    data.write_text('{"prompt": "ok", "demonstration": "ok"}\n')
    config = tmp_path / "stage.yaml"
    config.write_text("method: sdft\nbatch_size: [1\n")
    missing = str(tmp_path / "missing")
    code = main(["train", "--data", str(data), "--base", missing, "--out", str(tmp_path / "o"),
                 "--config", str(config), "--grader", "bogus"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert "3 problem(s), nothing was run" in err
    assert f"config: {config}: not valid YAML at line 3, column 1:" in err
    assert "grader: unknown grader 'bogus' (known: choice, contains," in err
    assert not (tmp_path / "o").exists()


def test_an_output_directory_that_cannot_be_made_is_reported_before_any_compute(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "demos.jsonl"
    data.write_text('{"prompt": "ok", "demonstration": "ok"}\n')
    (tmp_path / "a-file").write_text("")
    out = tmp_path / "a-file" / "out"
    code = main(["train", "--data", str(data), "--base", str(tiny_model_dir), "--out", str(out),
                 "--backend", "transformers"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 2
    assert f"out: cannot create {out}: Not a directory" in captured.err
    assert captured.out == ""  # the readiness probe never ran (it prints its choice)


def test_a_teacher_prompt_that_does_not_fit_is_a_data_error(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "demos.jsonl"
    data.write_text(json.dumps({"prompt": "q", "demonstration": "word " * 400}) + "\n")
    config = tmp_path / "stage.json"
    config.write_text(json.dumps({"max_teacher_prompt_tokens": 64}))
    code = main(["train", "--data", str(data), "--base", str(tiny_model_dir), "--out", str(tmp_path / "o"),
                 "--config", str(config)])  # fmt: skip
    assert code == 2
    assert "data: line 1: demonstration: the teacher prompt is" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("backend", "named"),
    [
        ("carrier-pigeon", "SDFT_ROLLOUT_BACKEND:"),
        ("vllm-server", "SDFT_ROLLOUT_*: Value error, backend 'vllm-server' needs server_url"),
    ],
)
def test_an_unusable_rollout_setting_is_reported_with_the_rest(
    backend: str,
    named: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("SDFT_ROLLOUT_BACKEND", backend)
    data = tmp_path / "demos.jsonl"
    data.write_text('{"prompt": "ok", "demonstration": "ok"}\n')
    missing = str(tmp_path / "missing")
    code = main(["train", "--data", str(data), "--base", missing, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2
    assert "2 problem(s), nothing was run" in err
    assert named in err and "base:" in err


def test_vllm_asked_for_where_it_is_not_installed_is_a_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else find_spec(name, *a)
    )
    data = tmp_path / "demos.jsonl"
    data.write_text('{"prompt": "ok", "demonstration": "ok"}\n')
    missing = str(tmp_path / "missing")
    code = main(
        ["train", "--data", str(data), "--base", missing, "--out", str(tmp_path / "o"), "--backend", "vllm"]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "backend: vLLM is not installed; install vLLM" in err
