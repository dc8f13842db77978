"""Resident memory of the colocated vLLM engine in a trainer's process, step by step.

    python bench/engine_memory.py

Loads SmolLM2 as a stage's student would (the peer: what a trainer holds without an engine), builds
the engine a full fine-tuning stage builds (8 sequences of 97 tokens, the shipped settings), then
runs two steps' worth of engine work: sync the student's weights, sample the batch (after which a CPU
engine releases its weights until the next sync). After each point glibc is asked to hand freed heap
pages back (malloc_trim), so the figures are memory held, not memory the allocator keeps. Prints
RSS and anonymous RSS per point.
"""

from __future__ import annotations

import ctypes
import re
from pathlib import Path


def resident_mb() -> tuple[float, float]:
    status = Path("/proc/self/status").read_text()
    rss, anon = (int(re.search(rf"{key}:\s+(\d+)", status).group(1)) / 1024 for key in ("VmRSS", "RssAnon"))  # type: ignore[union-attr]
    return rss, anon


def main() -> None:
    rows = [("python", *resident_mb())]
    from app.contracts.rollout_settings import rollout_settings_from_env
    from workers.models.loading import load_model
    from workers.models.placement import default_placement
    from workers.models.smollm2 import import_default
    from workers.rollout.base import RolloutShape, SamplingParams
    from workers.rollout.vllm_engine import VllmEngineBackend, import_vllm

    model_dir = import_default()
    import_vllm()
    rows.append(("torch, transformers and vLLM imported", *resident_mb()))
    student = load_model(model_dir, default_placement("cpu"))
    rows.append(("student loaded (the peer)", *resident_mb()))
    engine = VllmEngineBackend(
        model_dir, rollout_settings_from_env(), student=student, shape=RolloutShape(8, 97)
    )
    trim = ctypes.CDLL("libc.so.6").malloc_trim
    trim(0)
    rows.append(("engine built", *resident_mb()))
    prompts = [[1, *range(100, 140)]] * 8  # 8 prompts of 41 tokens, like the stage's
    for step in (0, 1):
        engine.sync_weights(step)
        trim(0)
        rows.append((f"weights synced (step {step})", *resident_mb()))
        engine.generate(prompts, SamplingParams(max_new_tokens=56, temperature=1.0, seed=step))
        trim(0)
        released = "weights released" if engine.releases_weights else "weights kept"
        rows.append((f"batch sampled (step {step}, {released})", *resident_mb()))
    engine.close()
    print("| point | RSS MB | anonymous RSS MB | anonymous vs student loaded |")
    print("|---|---|---|---|")
    peer = rows[2][2]
    for label, rss, anon in rows:
        print(f"| {label} | {rss:.0f} | {anon:.0f} | {anon - peer:+.0f} |")


if __name__ == "__main__":
    main()
