"""A fake clock for tests: call it for the time, move it with ``advance``."""

from __future__ import annotations


class FakeClock:
    """Drop-in for ``time.time``: ``clock()`` returns the current fake time."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = float(start)

    def __call__(self) -> float:
        return self._now

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError("time does not go backwards")
        self._now += seconds
        return self._now

    def set(self, when: float) -> None:
        self._now = float(when)
