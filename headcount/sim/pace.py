"""How simulated time maps to wall time: a fixed speed-up, or a target rate of events.

A pace answers one question: how many wall-clock seconds after the run began is the simulated
instant ``at`` (ms) due. The firmware sleeps until then before acting on it.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol


class Pace(Protocol):
    def offset(self, at: int) -> float:
        """Seconds after the start of the run at which the simulated instant ``at`` is due."""
        ...


@dataclass(frozen=True, slots=True)
class Speed:
    """The simulated clock runs ``factor`` times faster than the wall clock from ``start``."""

    start: int
    factor: float

    def __post_init__(self) -> None:
        if not self.factor > 0:
            raise ValueError(f"speed must be positive, not {self.factor}")

    def offset(self, at: int) -> float:
        return (at - self.start) / 1000 / self.factor


class Rate:
    """Events are due at ``per_second`` a second, evenly, whatever their simulated times: the
    simulated clock runs fast where the day is quiet and slow at its peaks. Other instants are
    due when the events before them are."""

    def __init__(self, releases: Iterable[int], per_second: float) -> None:
        if not per_second > 0:
            raise ValueError(f"rate must be positive, not {per_second}")
        self._releases = sorted(releases)
        self.per_second = per_second

    def offset(self, at: int) -> float:
        return bisect_left(self._releases, at) / self.per_second
