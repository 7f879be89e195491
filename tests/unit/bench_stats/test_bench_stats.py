"""The benchmark suite's statistics (bench/stats.py): pure helpers, checked against
values worked out by hand and numpy's default (linear) percentile method."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from bench.stats import median, paired_ratios, percentile, ratio, summary  # noqa: E402


def test_percentile_interpolates_between_ranks() -> None:
    values = [4.0, 1.0, 3.0, 2.0]  # sorted: 1 2 3 4
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile(values, 50) == 2.5
    assert percentile(values, 25) == pytest.approx(1.75)
    assert percentile(values, 99) == pytest.approx(3.97)  # numpy.percentile(..., 99)


def test_median_of_odd_and_single() -> None:
    assert median([5.0, 1.0, 3.0]) == 3.0
    assert median([7.0]) == 7.0
    assert percentile([7.0], 99) == 7.0


def test_p99_of_a_hundred_is_near_the_top() -> None:
    values = [float(i) for i in range(1, 101)]
    assert percentile(values, 99) == pytest.approx(99.01)


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_summary_and_ratios() -> None:
    s = summary([1.0, 2.0, 3.0, 4.0, 100.0])
    assert (s["n"], s["median"], s["min"], s["max"], s["mean"]) == (5, 3.0, 1.0, 100.0, 22.0)
    assert ratio(3.0, 2.0) == 1.5
    assert ratio(1.0, 0.0) is None
    assert paired_ratios([2.0, 3.0, 1.0], [1.0, 3.0, 0.0]) == [2.0, 1.0]
