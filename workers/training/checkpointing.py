"""Resumable stage checkpoints, written durably (temp dir, fsync, rename, fsync the parent) and checked
when read back: a checkpoint whose files do not match the sha256s its meta.json recorded (a torn write,
a truncated file) is skipped for the one before it.

Layout of `<out>/checkpoints/step-000040/`:
- the student: `model.safetensors` + config (full fine-tuning) or `adapter_model.safetensors` +
  `adapter_config.json` (LoRA), written by `save_pretrained`;
- `optimizer.pt`: AdamW and LR-scheduler state;
- `teacher.safetensors`: the EMA teacher's fp32 shadow (absent for frozen/live teachers);
- `meta.json`: the full config, step, data position, RNG states, base model and its sha256, the
  file names above, the student weights' sha256 and every file's sha256.
A directory without `meta.json` is never considered: the rename is the commit point.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from app.contracts.artifacts import file_sha256, publish_dir

FORMAT_VERSION = 1
CHECKPOINTS = "checkpoints"


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    meta: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.meta["step"])

    @property
    def is_lora(self) -> bool:
        return (self.path / "adapter_config.json").is_file()


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch_cpu": base64.b64encode(torch.random.get_rng_state().numpy().tobytes()).decode()
    }
    if torch.cuda.is_available():
        state["torch_cuda"] = [
            base64.b64encode(s.numpy().tobytes()).decode() for s in torch.cuda.get_rng_state_all()
        ]
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    cpu = torch.frombuffer(bytearray(base64.b64decode(state["torch_cpu"])), dtype=torch.uint8)
    torch.random.set_rng_state(cpu)
    if torch.cuda.is_available() and "torch_cuda" in state:
        cuda = [
            torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8) for s in state["torch_cuda"]
        ]
        torch.cuda.set_rng_state_all(cuda)


def weights_sha256(directory: Path) -> str:
    names = sorted(p.name for p in directory.glob("*.safetensors") if p.name != "teacher.safetensors")
    joined = "".join(f"{n}:{file_sha256(directory / n)};" for n in names)
    return hashlib.sha256(joined.encode()).hexdigest()


def save_checkpoint(
    out_dir: Path,
    *,
    step: int,
    student: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    teacher_state: dict[str, torch.Tensor],
    meta: dict[str, Any],
    keep: int,
) -> Checkpoint:
    root = out_dir / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tmp-step-", dir=root))
    staging.chmod(0o755)  # mkdtemp makes it owner-only; the result is shared
    try:
        student.save_pretrained(staging, safe_serialization=True)  # type: ignore[operator]
        torch.save(
            {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
            staging / "optimizer.pt",
        )
        if teacher_state:
            save_file(teacher_state, str(staging / "teacher.safetensors"))
        full_meta = {
            **meta,
            "format_version": FORMAT_VERSION,
            "step": step,
            "created_at": int(time.time()),
            "rng": rng_state(),
            "files": {
                "optimizer": "optimizer.pt",
                "teacher": "teacher.safetensors" if teacher_state else None,
            },
            "weights_sha256": weights_sha256(staging),
            "file_sha256": _file_hashes(staging),
        }
        (staging / "meta.json").write_text(json.dumps(full_meta, indent=2, sort_keys=True) + "\n")
        final = root / f"step-{step:06d}"
        # A re-run of the same step (a redelivered task) replaces it whole, never leaving it half-written.
        publish_dir(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _prune(root, keep)
    return Checkpoint(final, full_meta)


def _file_hashes(directory: Path) -> dict[str, str]:
    return {
        p.name: file_sha256(p) for p in sorted(directory.iterdir()) if p.is_file() and p.name != "meta.json"
    }


def _prune(root: Path, keep: int) -> None:
    complete = sorted(p for p in root.glob("step-*") if (p / "meta.json").is_file())
    for old in complete[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    # Left by a crash mid-write or mid-replace; never referenced.
    for stale in [*root.glob(".tmp-step-*"), *root.glob(".replaced-*")]:
        shutil.rmtree(stale, ignore_errors=True)


def verify_checkpoint(path: Path) -> Checkpoint | None:
    """The checkpoint if its meta.json reads and every file matches its recorded sha256, else None."""
    try:
        meta = json.loads((path / "meta.json").read_text())
        recorded = meta.get("file_sha256")
        if recorded is None:  # written before file hashes were recorded: check the weights at least
            ok = meta["weights_sha256"] == weights_sha256(path)
        else:
            ok = recorded == _file_hashes(path)
    except (OSError, ValueError, KeyError):
        return None
    return Checkpoint(path, meta) if ok else None


def latest_checkpoint(out_dir: Path) -> Checkpoint | None:
    """The newest checkpoint that verifies; a torn or tampered one is skipped (warned) for the one before."""
    root = out_dir / CHECKPOINTS
    complete = sorted(p for p in root.glob("step-*") if (p / "meta.json").is_file()) if root.is_dir() else []
    for path in reversed(complete):
        checkpoint = verify_checkpoint(path)
        if checkpoint is not None:
            return checkpoint
        warnings.warn(
            f"skipping checkpoint {path}: its files do not match the sha256s it recorded", stacklevel=2
        )
    return None


def load_training_state(
    checkpoint: Checkpoint, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler
) -> dict[str, torch.Tensor]:
    """Restore optimizer, scheduler and RNG state; return the teacher tensors (possibly empty)."""
    state = torch.load(checkpoint.path / "optimizer.pt", map_location="cpu", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    restore_rng_state(checkpoint.meta["rng"])
    teacher_file = checkpoint.meta["files"].get("teacher")
    return load_file(str(checkpoint.path / teacher_file)) if teacher_file else {}
