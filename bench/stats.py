"""Percentiles, summaries and ratios for the benchmark table. Pure; no I/O."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between closest ranks, as
    numpy's default ("linear") method: p0 is the minimum, p100 the maximum, p50 the median."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, not {q}")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


def summary(values: Sequence[float]) -> dict[str, float | int]:
    """n, median, p90, p99, min, max and mean of a sample."""
    return {"n": len(values), "median": median(values), "p90": percentile(values, 90),
            "p99": percentile(values, 99), "min": min(values), "max": max(values),
            "mean": sum(values) / len(values)}


def ratio(ours: float, baseline: float) -> float | None:
    """ours / baseline, or None when the baseline is zero (nothing to compare with)."""
    return None if baseline == 0 else ours / baseline


def paired_ratios(ours: Sequence[float], baseline: Sequence[float]) -> list[float]:
    """Ratios of runs taken side by side (A/B/A/B): noise that hits a pair hits both."""
    return [a / b for a, b in zip(ours, baseline, strict=True) if b]
