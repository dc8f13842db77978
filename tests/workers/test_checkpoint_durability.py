"""Checkpoints survive crashes: a kill -9 while a checkpoint is being written resumes from the last
complete one and ends with the weights of an uninterrupted run; a torn checkpoint (a truncated
safetensors file) is detected by its recorded sha256s and skipped for the one before it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from app.training.stage_config import StageConfig
from workers.training.checkpointing import latest_checkpoint
from workers.training.loop import run_stage

FAST = {"batch_size": 4, "micro_batch_size": 2, "max_new_tokens": 8, "learning_rate": 1e-3, "probe_rows": 0}
CONFIG = StageConfig(method="sft", max_steps=6, checkpoint_every=2, **FAST)

# The child trains; just before it publishes the step-4 checkpoint (every file written to the staging
# directory, nothing renamed yet) it says so and waits to be killed.
CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import workers.training.checkpointing as checkpointing
    from app.contracts.demonstrations import parse_demonstrations
    from app.training.stage_config import StageConfig
    from workers.training.loop import run_stage

    base, out, rows_file, marker, config_json = sys.argv[1:6]
    real_publish = checkpointing.publish_dir

    def publish(staging, final):
        if final.name == "step-000004":
            Path(marker).write_text("writing")
            time.sleep(60)
        real_publish(staging, final)

    checkpointing.publish_dir = publish
    rows = parse_demonstrations(Path(rows_file).read_text())
    run_stage(base_dir=base, rows=rows, config=StageConfig.model_validate_json(config_json), out_dir=out)
    """
)


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(model_dir / "model.safetensors"))


def test_kill_9_while_writing_a_checkpoint_resumes_from_the_last_complete_one(
    tiny_model_dir: Path, tiny_rows: list, tmp_path: Path
) -> None:
    from tests.conftest import arithmetic_rows

    straight = run_stage(
        base_dir=tiny_model_dir, rows=tiny_rows, config=CONFIG, out_dir=tmp_path / "straight"
    )
    rows_file, marker, out = tmp_path / "rows.jsonl", tmp_path / "writing", tmp_path / "crashed"
    rows_file.write_text(arithmetic_rows())
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    child = subprocess.Popen(
        [
            sys.executable,
            str(script),
            str(tiny_model_dir),
            str(out),
            str(rows_file),
            str(marker),
            CONFIG.model_dump_json(),
        ],
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    deadline = time.time() + 120
    while not marker.exists():
        assert child.poll() is None, "the child died before reaching the checkpoint"
        assert time.time() < deadline, "the child never reached the step-4 checkpoint"
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    staging = list((out / "checkpoints").glob(".tmp-step-*"))
    assert staging, "the half-published checkpoint is left behind as a staging directory"
    found = latest_checkpoint(out)
    assert found is not None and found.step == 2, "the last complete checkpoint is step 2"
    resumed = run_stage(base_dir=tiny_model_dir, rows=tiny_rows, config=CONFIG, out_dir=out)
    assert not list((out / "checkpoints").glob(".tmp-step-*")), "the leftover is cleaned up"
    a, b = _weights(straight.model_dir), _weights(resumed.model_dir)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize("victim", ["model.safetensors", "optimizer.pt"])
def test_a_torn_checkpoint_is_skipped_for_the_one_before(
    tiny_model_dir: Path, tiny_rows: list, tmp_path: Path, victim: str
) -> None:
    config = CONFIG.model_copy(update={"max_steps": 4})
    with pytest.raises(KeyboardInterrupt):  # stop after step 4 is checkpointed, before the final model
        run_stage(
            base_dir=tiny_model_dir,
            rows=tiny_rows,
            config=config.model_copy(update={"max_steps": 6}),
            out_dir=tmp_path,
            on_step=lambda m: (_ for _ in ()).throw(KeyboardInterrupt()) if m.step == 5 else None,
        )
    newest = latest_checkpoint(tmp_path)
    assert newest is not None and newest.step == 4
    torn = newest.path / victim
    torn.write_bytes(torn.read_bytes()[: torn.stat().st_size // 2])  # as a crash mid-write would leave it
    with pytest.warns(UserWarning, match="do not match"):
        fallback = latest_checkpoint(tmp_path)
    assert fallback is not None and fallback.step == 2
