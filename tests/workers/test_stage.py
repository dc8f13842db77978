"""Whole stages on a tiny model: SDFT and SFT, full and LoRA, resume equivalence, idempotent re-runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from app.contracts.artifacts import model_dir_sha256
from app.contracts.stage_config import StageConfig
from workers.models.loading import default_placement, load_model
from workers.training.checkpointing import latest_checkpoint
from workers.training.loop import ResumeMismatch, StageCancelled, StepMetrics, run_stage

FAST = {"batch_size": 4, "micro_batch_size": 2, "max_new_tokens": 12, "learning_rate": 1e-3}


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(model_dir / "model.safetensors"))


@pytest.mark.parametrize(
    "overrides",
    [
        {"method": "sdft"},
        {"method": "sft"},
        {"method": "sdft", "lora_rank": 4},
        {"method": "sdft", "lora_rank": 4, "teacher": "frozen"},
        {"method": "sdft", "teacher": "frozen", "divergence": "jsd", "support": "teacher_topk", "top_k": 8},
        {"method": "sdft", "divergence": "reverse_kl", "support": "sampled_token", "rollouts_per_prompt": 2},
    ],
    ids=["sdft-full-ema", "sft-full", "sdft-lora-ema", "sdft-lora-frozen", "sdft-jsd-topk", "sdft-sampled"],
)
def test_stage_trains_and_writes_a_loadable_model(
    tiny_model_dir: Path, tiny_rows: list, tmp_path: Path, overrides: dict
) -> None:
    seen: list[StepMetrics] = []
    config = StageConfig(max_steps=3, **FAST, **overrides)
    result = run_stage(
        base_dir=tiny_model_dir, rows=tiny_rows, config=config, out_dir=tmp_path, on_step=seen.append
    )

    assert [m.step for m in seen] == [1, 2, 3]
    assert all(torch.isfinite(torch.tensor(m.loss)) and m.grad_norm > 0 for m in seen)
    if config.method == "sdft":
        assert all(m.rollout_tokens_mean > 0 and m.rollout_seconds > 0 for m in seen)
        # Every SDFT step checks its rollouts for the teacher template's wording; SFT has none.
        assert all(m.rollout_leak_fraction is not None and 0 <= m.rollout_leak_fraction <= 1 for m in seen)
    else:
        assert all(m.rollout_leak_fraction is None for m in seen)
    before, after = _weights(tiny_model_dir), _weights(result.model_dir)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed, "training must change the weights"
    if "lora_rank" in overrides:
        assert (result.model_dir / "adapter" / "adapter_model.safetensors").is_file()
        assert all("embed" not in k for k in changed), "LoRA leaves the embeddings alone"
    assert result.sha256 == model_dir_sha256(result.model_dir)
    meta = json.loads((result.model_dir / "meta.json").read_text())
    assert meta["base_sha256"] == model_dir_sha256(tiny_model_dir)
    assert meta["config"]["method"] == config.method
    load_model(result.model_dir, default_placement("cpu"))  # a plain HF model directory


class CrashAfter(Exception):
    pass


def _crash_after(step: int):
    def on_step(m: StepMetrics) -> None:
        if m.step == step:
            raise CrashAfter(step)

    return on_step


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_resume_after_a_crash_equals_an_uninterrupted_run(
    tiny_model_dir: Path, tiny_rows: list, tmp_path: Path, lora: bool
) -> None:
    config = StageConfig(max_steps=5, checkpoint_every=2, lora_rank=4 if lora else None, **FAST)
    straight = run_stage(
        base_dir=tiny_model_dir, rows=tiny_rows, config=config, out_dir=tmp_path / "straight"
    )

    crashed = tmp_path / "crashed"
    with pytest.raises(CrashAfter):  # dies after step 3; the last checkpoint is step 2
        run_stage(
            base_dir=tiny_model_dir, rows=tiny_rows, config=config, out_dir=crashed, on_step=_crash_after(3)
        )
    found = latest_checkpoint(crashed)
    assert found is not None and found.step == 2 and found.meta["data_position"] == 8
    steps: list[int] = []
    resumed = run_stage(
        base_dir=tiny_model_dir,
        rows=tiny_rows,
        config=config,
        out_dir=crashed,
        on_step=lambda m: steps.append(m.step),
    )
    assert steps == [3, 4, 5], "step 3 is redone from the checkpoint, never applied twice"
    a, b = _weights(straight.model_dir), _weights(resumed.model_dir)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)
    if not lora:
        teacher_a = load_file(str(latest_checkpoint(tmp_path / "straight").path / "teacher.safetensors"))  # type: ignore[union-attr]
        teacher_b = load_file(str(latest_checkpoint(crashed).path / "teacher.safetensors"))  # type: ignore[union-attr]
        for name in teacher_a:
            torch.testing.assert_close(teacher_a[name], teacher_b[name], rtol=0, atol=1e-6)


def test_cancel_stops_between_steps_and_keeps_a_checkpoint(
    tiny_model_dir: Path, tiny_rows: list, tmp_path: Path
) -> None:
    config = StageConfig(max_steps=6, checkpoint_every=100, **FAST)
    done: list[int] = []
    with pytest.raises(StageCancelled) as info:
        run_stage(
            base_dir=tiny_model_dir,
            rows=tiny_rows,
            config=config,
            out_dir=tmp_path,
            on_step=lambda m: done.append(m.step),
            should_stop=lambda: len(done) >= 2,
        )
    assert info.value.step == 2 and done == [1, 2]
    found = latest_checkpoint(tmp_path)
    assert found is not None and found.step == 2


def test_finished_stage_is_returned_again_and_other_inputs_are_refused(
    tiny_model_dir: Path, tiny_rows: list, tmp_path: Path
) -> None:
    config = StageConfig(max_steps=2, **FAST)
    first = run_stage(base_dir=tiny_model_dir, rows=tiny_rows, config=config, out_dir=tmp_path)
    calls: list[StepMetrics] = []
    again = run_stage(
        base_dir=tiny_model_dir, rows=tiny_rows, config=config, out_dir=tmp_path, on_step=calls.append
    )
    assert again.sha256 == first.sha256 and calls == []
    with pytest.raises(ResumeMismatch, match="config"):
        run_stage(
            base_dir=tiny_model_dir,
            rows=tiny_rows,
            config=config.model_copy(update={"seed": 1}),
            out_dir=tmp_path,
        )
    with pytest.raises(ResumeMismatch, match="data"):
        run_stage(base_dir=tiny_model_dir, rows=tiny_rows[:-1], config=config, out_dir=tmp_path)


def test_pinned_losses_of_a_seeded_tiny_run(tiny_model_dir: Path, tiny_rows: list, tmp_path: Path) -> None:
    """Regression pin: a silent change to the math (masking, reduction, slicing) moves these numbers."""
    seen: list[StepMetrics] = []
    for method in ("sdft", "sft"):
        config = StageConfig(method=method, max_steps=2, **FAST)
        run_stage(
            base_dir=tiny_model_dir,
            rows=tiny_rows,
            config=config,
            out_dir=tmp_path / method,
            on_step=seen.append,
        )
    losses = [round(m.loss, 4) for m in seen]
    assert losses == pytest.approx(PINNED_LOSSES, abs=2e-3), losses


PINNED_LOSSES = [4.1417, 4.037, 8.969, 8.4608]  # sdft step 1, 2; sft step 1, 2
