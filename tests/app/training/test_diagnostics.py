"""The learning-diagnostics rules: loss concentration and the stall rule (`ProbeRecord`), against
hand-computed cases."""

from __future__ import annotations

import pytest

from app.training.diagnostics import ProbeRecord, loss_concentration, stall_message


def test_concentration_is_the_top_five_percent_share() -> None:
    # 40 positions: the top 5% is 2 positions; 10 + 6 of a total of 16 + 38 * 0.5 = 35.
    values = [10.0, 6.0] + [0.5] * 38
    assert loss_concentration(values) == pytest.approx(16.0 / 35.0)
    assert loss_concentration([1.0] * 100) == pytest.approx(0.05)  # spread evenly
    assert loss_concentration([3.0]) == 1.0  # at least one position
    assert loss_concentration([0.0, 0.0]) is None and loss_concentration([]) is None


def _stalled(record: ProbeRecord, done_fraction: float = 0.5) -> bool:
    return record.stalled(done_fraction=done_fraction, stall_fraction=0.5, min_relative_drop=0.05)


def test_stall_needs_the_share_of_steps_and_too_small_a_drop() -> None:
    start = ProbeRecord.start(1.0, None)
    assert not _stalled(start.updated(1.0, None), done_fraction=0.4), "too early to tell"
    assert _stalled(start.updated(0.97, None))
    assert not _stalled(start.updated(0.9, None))
    assert _stalled(start.updated(1.2, None), done_fraction=1.0), "rising is not learning"
    matched = ProbeRecord.start(0.0, None).updated(0.0, None)
    assert not _stalled(matched, done_fraction=1.0), "nothing to learn"
    assert _stalled(start.updated(float("nan"), None)), "a failed reading moves nothing"


def test_the_best_reading_counts_not_the_latest() -> None:
    # The demo's format stage: the divergence fell 28% by half-way, drifted back to 5% under the
    # baseline by the last step, while the student came to answer every probe prompt right.
    record = ProbeRecord.start(0.405, 0.0).updated(0.292, 0.875).updated(0.385, 1.0)
    assert record.lowest == 0.292 and record.highest_score == 1.0
    assert not _stalled(record, done_fraction=1.0)
    assert not _stalled(ProbeRecord.start(1.0, None).updated(0.8, None).updated(1.0, None), done_fraction=1.0)


def test_a_rising_greedy_score_is_learning_whatever_the_divergence() -> None:
    assert not _stalled(ProbeRecord.start(0.405, 0.0).updated(0.400, 0.25)), "one more answer right"
    assert _stalled(ProbeRecord.start(0.405, 0.25).updated(0.400, 0.25)), "same score, same divergence"
    assert _stalled(ProbeRecord.start(0.405, 0.5).updated(0.400, 0.25)), "a falling score is not learning"


def test_the_record_survives_a_checkpoint() -> None:
    record = ProbeRecord.start(0.5, 0.25).updated(0.45, 0.5)
    assert ProbeRecord.from_meta({"other": 1, **record.to_meta()}) == record
    assert ProbeRecord.from_meta({"learning_stalled": False}) is None, "no probe in that stage"
    # Checkpoints written before the record kept only the baseline divergence.
    assert ProbeRecord.from_meta({"probe_baseline": 0.5}) == ProbeRecord.start(0.5, None)


def test_the_stall_message_says_what_did_not_move() -> None:
    message = stall_message(
        stage=1, total=2, step=20, steps=40, baseline=0.8, current=0.79, baseline_score=0.25, method="sdft"
    )
    assert "0.800 to 0.790" in message and "stage 1/2 step 20/40" in message
    assert "greedy score never rose above 25%" in message
    assert "'sft_retain'" in message
    retaining = stall_message(
        stage=1,
        total=1,
        step=20,
        steps=40,
        baseline=0.8,
        current=0.79,
        baseline_score=None,
        method="sft_retain",
    )
    assert "'sft_retain'" not in retaining, "never advise the method the stage already runs"
    assert "greedy score" not in retaining, "no grader, no score"
