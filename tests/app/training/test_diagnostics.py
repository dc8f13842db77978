"""The learning-diagnostics rules: loss concentration and the stall rule, against hand-computed cases."""

from __future__ import annotations

import pytest

from app.training.diagnostics import loss_concentration, probe_stalled, stall_message


def test_concentration_is_the_top_five_percent_share() -> None:
    # 40 positions: the top 5% is 2 positions; 10 + 6 of a total of 16 + 38 * 0.5 = 35.
    values = [10.0, 6.0] + [0.5] * 38
    assert loss_concentration(values) == pytest.approx(16.0 / 35.0)
    assert loss_concentration([1.0] * 100) == pytest.approx(0.05)  # spread evenly
    assert loss_concentration([3.0]) == 1.0  # at least one position
    assert loss_concentration([0.0, 0.0]) is None and loss_concentration([]) is None


def test_stall_needs_the_share_of_steps_and_too_small_a_drop() -> None:
    kwargs = {"stall_fraction": 0.5, "min_relative_drop": 0.05}
    assert not probe_stalled(1.0, 1.0, done_fraction=0.4, **kwargs), "too early to tell"
    assert probe_stalled(1.0, 0.97, done_fraction=0.5, **kwargs)
    assert not probe_stalled(1.0, 0.9, done_fraction=0.5, **kwargs)
    assert probe_stalled(1.0, 1.2, done_fraction=1.0, **kwargs), "rising is not learning"
    assert not probe_stalled(0.0, 0.0, done_fraction=1.0, **kwargs), "nothing to learn"
    message = stall_message(stage=1, total=2, step=20, steps=40, baseline=0.8, current=0.79, method="sdft")
    assert "0.800 to 0.790" in message and "stage 1/2 step 20/40" in message
    assert "'sft_retain'" in message
    retaining = stall_message(
        stage=1, total=1, step=20, steps=40, baseline=0.8, current=0.79, method="sft_retain"
    )
    assert "'sft_retain'" not in retaining, "never advise the method the stage already runs"
