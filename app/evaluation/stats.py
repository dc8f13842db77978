"""Seeded percentile-bootstrap confidence intervals for suite means and paired differences.

Scale: these functions keep the units they are given. The service reports *points* (0..100), so
callers turn per-item scores (0/1, or fractions in 0..1) into points with `to_points` first; a
mean, delta and interval then read as "points", and a suite's tolerance is in the same units.

Determinism: resampling uses numpy's Generator(PCG64(seed)), so the same inputs and seed always
give the same interval on every platform.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

POINTS_PER_UNIT = 100.0
# Bound the index matrix drawn per chunk (resamples × n) so large suites stay within memory.
_MAX_DRAWS_PER_CHUNK = 4_000_000


def to_points(scores: Sequence[float]) -> list[float]:
    """Per-item scores in 0..1 → points in 0..100."""
    return [score * POINTS_PER_UNIT for score in scores]


def _as_array(scores: Sequence[float], name: str) -> npt.NDArray[np.float64]:
    array = np.asarray(scores, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a flat sequence of numbers")
    if array.size == 0:
        raise ValueError(f"{name} is empty: a mean needs at least one score")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite scores")
    return array


def _check_settings(resamples: int, confidence: float) -> None:
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be strictly between 0 and 1, got {confidence}")


def _bootstrap_interval(
    values: npt.NDArray[np.float64], seed: int, resamples: int, confidence: float
) -> tuple[float, float, float]:
    _check_settings(resamples, confidence)
    mean = float(np.mean(values))
    # Constant data has a zero-width interval; returning it directly avoids float noise from
    # re-averaging (e.g. mean of many 0.7s is not always exactly 0.7).
    if values.size == 1 or float(np.ptp(values)) == 0.0:
        return mean, mean, mean
    generator = np.random.Generator(np.random.PCG64(seed))
    n = values.size
    rows_per_chunk = max(1, _MAX_DRAWS_PER_CHUNK // n)
    resampled_means = np.empty(resamples, dtype=np.float64)
    for start in range(0, resamples, rows_per_chunk):
        stop = min(resamples, start + rows_per_chunk)
        indices = generator.integers(0, n, size=(stop - start, n))
        resampled_means[start:stop] = values[indices].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(resampled_means, [tail, 1.0 - tail])
    # The percentile interval of a mean practically always covers the sample mean; clamping only
    # guards the degenerate float edge so reports never show a mean outside its own interval.
    return mean, min(float(low), mean), max(float(high), mean)


def bootstrap_mean_ci(
    scores: Sequence[float], *, seed: int, resamples: int = 2000, confidence: float = 0.95
) -> tuple[float, float, float]:
    """(mean, low, high): percentile-bootstrap interval of the mean, resampling items with replacement.

    n = 0 raises ValueError; n = 1 (or all-equal scores) gives a zero-width interval (x, x, x).
    """
    return _bootstrap_interval(_as_array(scores, "scores"), seed, resamples, confidence)


def paired_bootstrap_delta_ci(
    parent: Sequence[float],
    candidate: Sequence[float],
    *,
    seed: int,
    resamples: int = 2000,
    confidence: float = 0.95,
) -> tuple[float, float, float]:
    """(delta_mean, low, high) for mean(candidate − parent), resampling item indices jointly.

    parent[i] and candidate[i] must be the same item. Pairing removes the per-item difficulty
    shared by both models, so the interval is far narrower than comparing two separate means.
    """
    parent_array = _as_array(parent, "parent")
    candidate_array = _as_array(candidate, "candidate")
    if parent_array.size != candidate_array.size:
        raise ValueError(f"paired scores differ in length: {parent_array.size} vs {candidate_array.size}")
    # Resampling the per-item differences draws the same indices for both sides: a joint resample.
    return _bootstrap_interval(candidate_array - parent_array, seed, resamples, confidence)


def derive_seed(seed: int, key: str) -> int:
    """A 63-bit seed derived from (seed, key), so independent streams stay reproducible."""
    digest = hashlib.sha256(f"{seed}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


# Two-sided 95% Student-t quantiles by degrees of freedom (1..30), then at 40, 60 and 120. Runs over
# seeds are few: the interval must widen accordingly. Between tabulated points the smaller df is
# used, which can only widen the interval.
_T_975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip
_T_975_LARGE = ((120, 1.980), (60, 2.000), (40, 2.021), (30, 2.042))


def _t_975(df: int) -> float:
    if df <= len(_T_975):
        return _T_975[df - 1]
    return next(quantile for at_least, quantile in _T_975_LARGE if df >= at_least)


def mean_t_interval(values: Sequence[float]) -> tuple[float, float | None, float | None]:
    """(mean, low, high) of a 95% Student-t interval over independent runs (e.g. seeds); the bounds
    are None for a single run."""
    array = _as_array(values, "values")
    mean = float(np.mean(array))
    if array.size == 1:
        return mean, None, None
    df = array.size - 1
    quantile = _t_975(df)
    half = quantile * float(np.std(array, ddof=1)) / float(np.sqrt(array.size))
    return mean, mean - half, mean + half
