"""Bounded exponential back-off for loops that must outlive any failure (the agent's
watch, relist and heartbeat loops, the API's host monitor). Pure: it only counts."""

from __future__ import annotations


class Backoff:
    """`next()` gives initial, 2×initial, 4×initial, … capped at `maximum`; `reset()`
    after a success starts again from `initial`."""

    def __init__(self, initial: float = 0.5, maximum: float = 30.0) -> None:
        if initial <= 0 or maximum < initial:
            raise ValueError("back-off needs 0 < initial <= maximum")
        self._initial, self._max = initial, maximum
        self._failures = 0

    @property
    def failures(self) -> int:
        """Failures in a row since the last reset."""
        return self._failures

    def next(self) -> float:
        # The exponent is capped too: a loop failing for days must not overflow a float.
        delay = min(self._max, self._initial * 2.0 ** min(self._failures, 62))
        self._failures += 1
        return delay

    def reset(self) -> None:
        self._failures = 0
