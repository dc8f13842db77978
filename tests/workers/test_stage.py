"""Whole stages on a tiny model: every method, full and LoRA, resume equivalence, idempotent re-runs,
replay, the retention pool and the learning diagnostics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from app.contracts.artifacts import model_dir_sha256
from app.training.stage_config import StageConfig
from workers.models.loading import load_model
from workers.models.placement import default_placement
from workers.training.checkpointing import latest_checkpoint
from workers.training.loop import ResumeMismatch, StageCancelled, StageInputs, StepMetrics, run_stage

FAST = {"batch_size": 4, "micro_batch_size": 2, "max_new_tokens": 12, "learning_rate": 1e-3, "probe_rows": 0}
POOL = [[{"role": "user", "content": f"Say something about the number {i}."}] for i in range(5)]
RETENTION = StageInputs(retention_prompts=POOL)


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
        {"method": "sdft", "loss_normalization": "token", "rollouts_per_prompt": 2},
        {"method": "sft_retain"},
        {"method": "sft_retain", "lora_rank": 4, "loss_normalization": "token"},
        {"method": "sft_restore"},
    ],
    ids=[
        "sdft-full-ema",
        "sft-full",
        "sdft-lora-ema",
        "sdft-lora-frozen",
        "sdft-jsd-topk",
        "sdft-sampled",
        "sdft-token-mean",
        "sft-retain-full",
        "sft-retain-lora",
        "sft-restore",
    ],
)
def test_stage_trains_and_writes_a_loadable_model(
    tiny_model_dir: Path, tiny_rows: list, tmp_path: Path, overrides: dict
) -> None:
    seen: list[StepMetrics] = []
    config = StageConfig(max_steps=3, **FAST, **overrides)
    result = run_stage(
        base_dir=tiny_model_dir,
        rows=tiny_rows,
        config=config,
        out_dir=tmp_path,
        on_step=seen.append,
        inputs=RETENTION,
    )

    assert [m.step for m in seen] == [1, 2, 3]
    assert all(m.method == config.method for m in seen)
    assert all(torch.isfinite(torch.tensor(m.loss)) and m.grad_norm > 0 for m in seen)
    if config.method == "sdft":
        assert all(m.rollout_tokens_mean > 0 and m.rollout_seconds > 0 for m in seen)
        # Every SDFT step checks its rollouts for the teacher template's wording; SFT has none.
        assert all(m.rollout_leak_fraction is not None and 0 <= m.rollout_leak_fraction <= 1 for m in seen)
    else:
        assert all(m.rollout_leak_fraction is None for m in seen)
    parts = [set(m.loss_parts or {}) for m in seen]
    expected_parts = {
        "sdft": [{"distillation"}] * 3,
        "sft": [{"supervised"}] * 3,
        "sft_retain": [{"supervised", "retention"}] * 3,
        # 3 steps, restore_fraction 0.5: ceil(1.5) = 2 restore steps after one SFT step.
        "sft_restore": [{"supervised"}, {"retention"}, {"retention"}],
    }[config.method]
    assert parts == expected_parts
    assert all(m.loss_top5_share is not None and 0.0 < m.loss_top5_share <= 1.0 for m in seen)
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


@pytest.mark.parametrize(
    ("method", "lora"),
    [
        ("sdft", False),
        ("sdft", True),
        ("sft", False),
        ("sft_retain", False),
        ("sft_restore", True),
    ],
    ids=["sdft-full", "sdft-lora", "sft-full", "sft-retain-full", "sft-restore-lora"],
)
def test_resume_after_a_crash_equals_an_uninterrupted_run(
    tiny_model_dir: Path, tiny_rows: list, tmp_path: Path, method: str, lora: bool
) -> None:
    config = StageConfig(
        method=method,  # type: ignore[arg-type]
        max_steps=5,
        checkpoint_every=2,
        lora_rank=4 if lora else None,
        **{**FAST, "probe_rows": 2, "diagnostics_every": 2},
    )
    # Replay too: the replayed rows of each step are a pure function of the step, like the rest.
    inputs = StageInputs(replay_rows=tiny_rows[:3], retention_prompts=POOL)
    straight = run_stage(
        base_dir=tiny_model_dir, rows=tiny_rows, config=config, out_dir=tmp_path / "straight", inputs=inputs
    )

    crashed = tmp_path / "crashed"
    with pytest.raises(CrashAfter):  # dies after step 3; the last checkpoint is step 2
        run_stage(
            base_dir=tiny_model_dir,
            rows=tiny_rows,
            config=config,
            out_dir=crashed,
            on_step=_crash_after(3),
            inputs=inputs,
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
        inputs=inputs,
    )
    assert steps == [3, 4, 5], "step 3 is redone from the checkpoint, never applied twice"
    # The stall rule judges the resumed stage against the readings taken before the crash.
    probe_keys = ("probe_baseline", "probe_baseline_score", "probe_lowest", "probe_highest_score")
    straight_meta, resumed_meta = (
        {k: latest_checkpoint(out).meta[k] for k in probe_keys}  # type: ignore[union-attr]
        for out in (tmp_path / "straight", crashed)
    )
    assert straight_meta == pytest.approx(resumed_meta)
    a, b = _weights(straight.model_dir), _weights(resumed.model_dir)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)
    if method == "sdft" and not lora:
        teacher_a = load_file(str(latest_checkpoint(tmp_path / "straight").path / "teacher.safetensors"))  # type: ignore[union-attr]
        teacher_b = load_file(str(latest_checkpoint(crashed).path / "teacher.safetensors"))  # type: ignore[union-attr]
        for name in teacher_a:
            torch.testing.assert_close(teacher_a[name], teacher_b[name], rtol=0, atol=1e-6)


def test_cancel_stops_between_steps_and_keeps_a_checkpoint(
    tiny_model_dir: Path, tiny_rows: list, tmp_path: Path
) -> None:
    config = StageConfig(method="sdft", max_steps=6, checkpoint_every=100, **FAST)
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
    config = StageConfig(method="sdft", max_steps=2, **FAST)
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
    with pytest.raises(ResumeMismatch, match="replay"):
        run_stage(
            base_dir=tiny_model_dir,
            rows=tiny_rows,
            config=config,
            out_dir=tmp_path,
            inputs=StageInputs(replay_rows=tiny_rows[:2]),
        )


def test_auto_must_be_resolved_before_training(tiny_model_dir: Path, tiny_rows: list, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="resolve 'auto' first"):
        run_stage(base_dir=tiny_model_dir, rows=tiny_rows, config=StageConfig(**FAST), out_dir=tmp_path)
    assert not any(tmp_path.iterdir()), "nothing is written"


def test_retention_methods_need_a_pool(tiny_model_dir: Path, tiny_rows: list, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="retention prompt pool"):
        run_stage(
            base_dir=tiny_model_dir,
            rows=tiny_rows,
            config=StageConfig(method="sft_retain", max_steps=1, **FAST),
            out_dir=tmp_path,
        )


def test_replay_mixes_earlier_rows_into_every_batch() -> None:
    from app.training.stage_config import resolve
    from workers.training.loop import step_rows

    resolved = resolve(StageConfig(batch_size=8, replay_fraction=0.25, max_steps=4), 10, replay_rows=6)
    seen_own, seen_replayed = [], []
    for step in range(4):
        own, replayed = step_rows(step, resolved, 10, 6, seed=42)
        assert len(own) == 6 and len(replayed) == 2
        assert step_rows(step, resolved, 10, 6, seed=42) == (own, replayed), "a pure function of the step"
        seen_own += own
        seen_replayed += replayed
    assert sorted(set(seen_own)) == list(range(10)) and set(seen_replayed) <= set(range(6))
    # Without earlier rows there is nothing to replay: the whole batch is the stage's own.
    no_replay = resolve(StageConfig(batch_size=8, replay_fraction=0.25), 10, replay_rows=0)
    assert step_rows(0, no_replay, 10, 0, seed=42)[1] == []


def test_diagnostics_are_measured_and_a_stall_is_flagged(
    tiny_model_dir: Path, tiny_rows: list, tmp_path: Path
) -> None:
    seen: list[StepMetrics] = []
    # A learning rate too small to move anything: the probe divergence cannot fall, so half-way through
    # the stage the stall flag goes up (and stays up).
    config = StageConfig(
        method="sdft",
        max_steps=4,
        **{**FAST, "learning_rate": 1e-9, "probe_rows": 3, "diagnostics_every": 1, "stall_fraction": 0.5},
    )
    run_stage(
        base_dir=tiny_model_dir,
        rows=tiny_rows,
        config=config,
        out_dir=tmp_path,
        on_step=seen.append,
        inputs=StageInputs(probe_grader="numeric"),
    )
    assert all(m.probe_divergence is not None and m.probe_divergence > 0 for m in seen)
    assert all(m.probe_nll is not None and m.probe_score is not None for m in seen)
    # The probe's time is part of the step's and reported apart (benchmarks compare training alone).
    assert all(m.probe_seconds is not None and 0 < m.probe_seconds < m.seconds for m in seen)
    assert all(m.probe_baseline == pytest.approx(seen[0].probe_divergence, rel=1e-3) for m in seen)
    assert [m.learning_stalled for m in seen] == [False, True, True, True]
    baseline = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert baseline["step"] == 0 and baseline["probe_divergence"] == pytest.approx(seen[0].probe_baseline)
    assert all(m.probe_baseline_score == baseline["probe_score"] for m in seen)


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


def test_micro_batches_group_rows_of_similar_width() -> None:
    from workers.models.forward import micro_batches

    widths = [30, 5, 12, 40, 6, 31, 11]
    groups = micro_batches(widths, 3)
    assert sorted(i for g in groups for i in g) == list(range(len(widths)))  # every row exactly once
    assert [len(g) for g in groups] == [3, 3, 1]
    assert [[widths[i] for i in g] for g in groups] == [[5, 6, 11], [12, 30, 31], [40]]
    with pytest.raises(ValueError, match="micro-batch size"):
        micro_batches(widths, 0)


@pytest.mark.parametrize("method", ["sft", "sdft"])
def test_a_step_does_not_depend_on_how_it_is_split_into_micro_batches(
    tiny_model_dir: Path, tmp_path: Path, method: str
) -> None:
    from app.contracts.demonstrations import parse_demonstrations

    # Demonstrations of very different lengths, so grouping by width changes every micro-batch.
    rows = parse_demonstrations(
        "\n".join(
            json.dumps({"prompt": f"Count to {i}.", "demonstration": " ".join(str(k) for k in range(i * 4))})
            for i in range(1, 5)
        )
    )
    seen: dict[int, StepMetrics] = {}
    for size in (1, 3, 4):
        config = StageConfig(method=method, max_steps=1, **{**FAST, "micro_batch_size": size})  # type: ignore[arg-type]
        result = run_stage(base_dir=tiny_model_dir, rows=rows, config=config, out_dir=tmp_path / str(size))
        assert result.last_metrics is not None
        seen[size] = result.last_metrics
    for size in (3, 4):
        assert seen[size].loss == pytest.approx(seen[1].loss, rel=1e-5)
        assert seen[size].grad_norm == pytest.approx(seen[1].grad_norm, rel=1e-4)


@pytest.mark.parametrize("method", ["sft", "sdft"])
def test_gradient_checkpointing_trains_the_same_model(
    tiny_model_dir: Path, tiny_rows: list, tmp_path: Path, method: str
) -> None:
    """The memory lever recomputes activations in backward; it must not change what is learned."""
    results = {}
    for checkpointing in (False, True):
        config = StageConfig(method=method, max_steps=2, gradient_checkpointing=checkpointing, **FAST)  # type: ignore[arg-type]
        results[checkpointing] = run_stage(
            base_dir=tiny_model_dir, rows=tiny_rows, config=config, out_dir=tmp_path / str(checkpointing)
        )
    plain, recomputed = results[False], results[True]
    assert plain.last_metrics is not None and recomputed.last_metrics is not None
    assert recomputed.last_metrics.loss == pytest.approx(plain.last_metrics.loss, rel=1e-5)
    assert recomputed.last_metrics.grad_norm == pytest.approx(plain.last_metrics.grad_norm, rel=1e-4)
    before, after = _weights(plain.model_dir), _weights(recomputed.model_dir)
    for name, tensor in before.items():
        torch.testing.assert_close(after[name], tensor, rtol=1e-5, atol=1e-6)
