"""A trailing-edge throttle per key: pure, the caller brings the time.

A key's first value passes at once; values that come within ``interval`` of the last one
passed wait, each replacing the one before, and the newest passes when the interval is over.
So a key is sent at most once per interval, and its last value is always sent: what a
retained state topic needs (the intermediate values are lost, the final one never).
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable
from typing import Generic, TypeVar

__all__ = ["Throttle"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Throttle(Generic[K, V]):
    """Holds back values per key; ``now`` is any monotonic time in seconds."""

    def __init__(self, interval: float) -> None:
        if not interval > 0:
            raise ValueError(f"the throttle interval must be above 0 s, got {interval}")
        self.interval = interval
        self._free_at: dict[K, float] = {}  # when the key may pass again
        self._waiting: dict[K, tuple[float, V]] = {}  # key -> (when it passes, newest value)
        self._heap: list[tuple[float, int, K]] = []  # (when, tiebreak, key); stale entries skipped
        self._pushed = 0

    def offer(self, key: K, value: V, now: float) -> bool:
        """``True``: send ``value`` now. ``False``: it waits for :meth:`due` (replacing any
        value of ``key`` that was waiting)."""
        free_at = self._free_at.get(key)
        if free_at is None or now >= free_at:
            self._free_at[key] = now + self.interval
            self._waiting.pop(key, None)
            return True
        if key not in self._waiting:
            heapq.heappush(self._heap, (free_at, self._pushed, key))
            self._pushed += 1
        self._waiting[key] = (free_at, value)
        return False

    def due(self, now: float) -> list[tuple[K, V]]:
        """The waiting values whose interval is over, oldest deadline first; each counts as
        sent now."""
        out: list[tuple[K, V]] = []
        while self._heap and self._heap[0][0] <= now:
            when, _, key = heapq.heappop(self._heap)
            waiting = self._waiting.get(key)
            if waiting is None or waiting[0] != when:
                continue  # passed by offer() since, or pushed again
            del self._waiting[key]
            self._free_at[key] = now + self.interval
            out.append((key, waiting[1]))
        return out

    def flush(self) -> list[tuple[K, V]]:
        """Every waiting value, at once (at a clean stop)."""
        out = [(key, value) for key, (_, value) in self._waiting.items()]
        self._waiting.clear()
        self._heap.clear()
        return out

    def next_due(self) -> float | None:
        """When the next waiting value passes, ``None`` when nothing waits."""
        while self._heap:
            when, _, key = self._heap[0]
            waiting = self._waiting.get(key)
            if waiting is not None and waiting[0] == when:
                return when
            heapq.heappop(self._heap)
        return None
