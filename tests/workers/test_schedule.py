from __future__ import annotations

import itertools
from collections import Counter

import pytest

from workers.training.schedule import batch_indices, lr_multiplier, rollout_seed


def test_warmup_then_cosine() -> None:
    values = [lr_multiplier(s, 20, 4, "cosine") for s in range(20)]
    assert values[:4] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert values[4] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(values[4:]))
    assert 0 < values[-1] < 0.05
    assert lr_multiplier(10, 20, 4, "constant") == 1.0
    assert lr_multiplier(0, 5, 0, "cosine") == pytest.approx(1.0)


def test_each_row_once_per_epoch_and_deterministic() -> None:
    rows, batch = 10, 4
    seen = [i for step in range(5) for i in batch_indices(step, batch, rows, seed=3)]  # two epochs
    assert Counter(seen[:10]) == Counter(range(10))
    assert Counter(seen[10:20]) == Counter(range(10))
    assert seen[:10] != seen[10:20], "each epoch is reshuffled"
    assert batch_indices(2, batch, rows, seed=3) == batch_indices(2, batch, rows, seed=3)
    assert batch_indices(2, batch, rows, seed=3) != batch_indices(2, batch, rows, seed=4)
    with pytest.raises(ValueError):
        batch_indices(0, 4, 0, seed=0)


def test_rollout_seed_depends_on_seed_and_step() -> None:
    assert rollout_seed(1, 5) == rollout_seed(1, 5)
    assert len({rollout_seed(s, t) for s in range(5) for t in range(50)}) == 250
