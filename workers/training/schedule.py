"""Pure functions that make a stage deterministic: learning-rate schedule, data order, rollout seeds.

Each is a function of the step alone, so a stage resumed at step k does exactly what an
uninterrupted one does from step k: no demonstration is skipped or repeated, and rollouts are
sampled with the same seeds.
"""

from __future__ import annotations

import math
import random
from typing import Literal


def lr_multiplier(
    step: int, total_steps: int, warmup_steps: int, schedule: Literal["cosine", "constant"]
) -> float:
    """Factor on the peak learning rate for optimizer step `step` (0-based).

    Linear warmup over `warmup_steps` that never starts at exactly 0 (a zero-rate step wastes a
    rollout), then cosine decay towards 0 that ends just above it on the last step.
    """
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def epoch_order(num_rows: int, seed: int, epoch: int) -> list[int]:
    order = list(range(num_rows))
    random.Random(f"sdft-data:{seed}:{epoch}").shuffle(order)
    return order


def batch_indices(step: int, batch_size: int, num_rows: int, seed: int) -> list[int]:
    """Row indices for optimizer step `step`: consecutive slices of a fresh shuffle each epoch."""
    if num_rows < 1 or batch_size < 1:
        raise ValueError("num_rows and batch_size must be positive")
    indices = []
    orders: dict[int, list[int]] = {}
    for position in range(step * batch_size, (step + 1) * batch_size):
        epoch, within = divmod(position, num_rows)
        if epoch not in orders:
            orders[epoch] = epoch_order(num_rows, seed, epoch)
        indices.append(orders[epoch][within])
    return indices


def rollout_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step * 7_919 + 17) % (2**31 - 1)
