"""Bootstrap intervals: seeded determinism, known cases, pairing."""

from __future__ import annotations

import numpy as np
import pytest

from app.evaluation.stats import bootstrap_mean_ci, derive_seed, paired_bootstrap_delta_ci, to_points


def binary_points(n: int, rate: float, seed: int) -> list[float]:
    generator = np.random.default_rng(seed)
    return to_points((generator.random(n) < rate).astype(float).tolist())


def test_to_points_scales_unit_scores() -> None:
    assert to_points([0.0, 1.0, 0.25]) == [0.0, 100.0, 25.0]


def test_same_seed_same_interval_different_seed_different_draws() -> None:
    scores = binary_points(200, 0.6, seed=1)
    first = bootstrap_mean_ci(scores, seed=7)
    assert bootstrap_mean_ci(scores, seed=7) == first
    assert bootstrap_mean_ci(list(scores), seed=7, resamples=2000, confidence=0.95) == first
    assert bootstrap_mean_ci(scores, seed=8)[1:] != first[1:]
    assert bootstrap_mean_ci(scores, seed=8)[0] == first[0]  # the mean itself does not depend on the seed


def test_interval_contains_the_mean_and_is_sensible() -> None:
    scores = binary_points(400, 0.3, seed=2)
    mean, low, high = bootstrap_mean_ci(scores, seed=0)
    assert mean == pytest.approx(float(np.mean(scores)))
    assert low < mean < high
    # Binomial standard error is about 2.3 points here: the 95% interval is roughly ±4.5 points.
    assert 5.0 < high - low < 13.0
    assert low >= 0.0 and high <= 100.0


def test_all_equal_scores_give_a_zero_width_interval() -> None:
    assert bootstrap_mean_ci([70.0] * 9, seed=3) == (70.0, 70.0, 70.0)
    assert bootstrap_mean_ci([0.7] * 13, seed=3) == (0.7, 0.7, 0.7)


def test_single_score_and_empty_input() -> None:
    assert bootstrap_mean_ci([42.0], seed=0) == (42.0, 42.0, 42.0)
    with pytest.raises(ValueError, match="empty"):
        bootstrap_mean_ci([], seed=0)


def test_two_point_known_case() -> None:
    # Resampled means are 0, 50 or 100 with probability 1/4, 1/2, 1/4, so the 95% interval spans all.
    assert bootstrap_mean_ci([0.0, 100.0], seed=0) == (50.0, 0.0, 100.0)


def test_wider_confidence_gives_wider_interval() -> None:
    scores = binary_points(100, 0.5, seed=4)
    _, low_90, high_90 = bootstrap_mean_ci(scores, seed=0, confidence=0.90)
    _, low_99, high_99 = bootstrap_mean_ci(scores, seed=0, confidence=0.99)
    assert low_99 <= low_90 and high_90 <= high_99
    assert high_99 - low_99 > high_90 - low_90


@pytest.mark.parametrize(("resamples", "confidence"), [(0, 0.95), (100, 0.0), (100, 1.0), (100, 1.5)])
def test_invalid_settings_raise(resamples: int, confidence: float) -> None:
    with pytest.raises(ValueError):
        bootstrap_mean_ci([1.0, 2.0], seed=0, resamples=resamples, confidence=confidence)


def test_non_finite_scores_raise() -> None:
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_mean_ci([1.0, float("nan")], seed=0)


def test_large_suite_is_chunked_but_deterministic() -> None:
    scores = binary_points(5000, 0.5, seed=5)  # 2000 × 5000 draws: more than one chunk
    first = bootstrap_mean_ci(scores, seed=11)
    assert bootstrap_mean_ci(scores, seed=11) == first
    assert first[1] < first[0] < first[2]


def test_paired_identical_results_give_zero_delta() -> None:
    scores = binary_points(50, 0.5, seed=6)
    assert paired_bootstrap_delta_ci(scores, scores, seed=0) == (0.0, 0.0, 0.0)


def test_paired_equals_bootstrap_of_differences() -> None:
    parent = binary_points(120, 0.5, seed=7)
    candidate = binary_points(120, 0.55, seed=8)
    differences = [c - p for p, c in zip(parent, candidate, strict=True)]
    assert paired_bootstrap_delta_ci(parent, candidate, seed=9) == bootstrap_mean_ci(differences, seed=9)
    delta, low, high = paired_bootstrap_delta_ci(parent, candidate, seed=9)
    assert delta == pytest.approx(np.mean(candidate) - np.mean(parent))
    assert low <= delta <= high


def test_pairing_is_much_tighter_than_unpaired_for_correlated_results() -> None:
    parent = binary_points(300, 0.5, seed=10)
    candidate = list(parent)
    for index in range(0, 300, 50):  # the candidate flips 6 of 300 items
        candidate[index] = 100.0 - candidate[index]
    _, low, high = paired_bootstrap_delta_ci(parent, candidate, seed=0)
    _, parent_low, parent_high = bootstrap_mean_ci(parent, seed=0)
    assert high - low < (parent_high - parent_low) / 3


def test_paired_deterministic_and_length_checked() -> None:
    parent = binary_points(80, 0.5, seed=12)
    candidate = binary_points(80, 0.6, seed=13)
    assert paired_bootstrap_delta_ci(parent, candidate, seed=1) == paired_bootstrap_delta_ci(
        parent, candidate, seed=1
    )
    with pytest.raises(ValueError, match="length"):
        paired_bootstrap_delta_ci(parent, candidate[:-1], seed=1)


def test_derive_seed_is_stable_and_key_sensitive() -> None:
    assert derive_seed(0, "abc") == derive_seed(0, "abc")
    assert derive_seed(0, "abc") != derive_seed(1, "abc")
    assert derive_seed(0, "abc") != derive_seed(0, "abd")
    assert 0 <= derive_seed(123, "x") < 2**63


def test_mean_t_interval_over_seeds() -> None:
    from app.evaluation.stats import mean_t_interval

    assert mean_t_interval([7.0]) == (7.0, None, None)
    mean, low, high = mean_t_interval([1.0, 2.0, 3.0])
    # sd 1, n 3, t(0.975, 2) = 4.303: half-width 4.303 / sqrt(3).
    assert (
        mean == 2.0
        and low == pytest.approx(2.0 - 4.303 / 3**0.5)
        and high == pytest.approx(2.0 + 4.303 / 3**0.5)
    )
    assert mean_t_interval([5.0, 5.0]) == (5.0, 5.0, 5.0)


@pytest.mark.parametrize(("runs", "quantile"), [(16, 2.131), (31, 2.042), (46, 2.021), (500, 1.980)])
def test_mean_t_interval_uses_the_t_quantile_beyond_ten_runs(runs: int, quantile: float) -> None:
    # Was 1.96 from 11 runs on: up to 11% too narrow at 12 runs.
    from app.evaluation.stats import mean_t_interval

    values = [float(i % 2) for i in range(runs)]
    mean, _low, high = mean_t_interval(values)
    sd = float(np.std(values, ddof=1))
    assert high is not None and high - mean == pytest.approx(quantile * sd / runs**0.5)
