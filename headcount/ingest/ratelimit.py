"""Limits on what one DPU can make ingest do: a token bucket of messages per DPU, and a budget of
quarantine entries per DPU and reason per time window.

A DPU that floods (a firmware bug, a stolen credential) must not starve the others, nor turn
into a flood of quarantine writes. Both limits key their state by DPU id only for DPUs the
topology knows; every other id shares one key, so a flood of made-up ids cannot grow memory.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "DEFAULT_DPU_BURST",
    "DEFAULT_DPU_RATE",
    "DEFAULT_QUARANTINE_KEEP",
    "DEFAULT_QUARANTINE_WINDOW_S",
    "UNKNOWN_DPU",
    "DpuRateLimiter",
    "QuarantineBudget",
    "RateLimit",
    "TokenBucket",
]

#: A DPU's default limit: messages per second on average, far above any doorway (a person
#: every 20 ms, all day), and a burst of 10,000 messages at once: a backlog after an outage
#: comes as arrays of up to 10,000 events each (the wire format), but firmware that sends it
#: one event per message, or publishers like bench/ingest.py, get 10,000 through at once.
DEFAULT_DPU_RATE = 50
DEFAULT_DPU_BURST = 10_000
#: Quarantine entries kept per DPU and reason per window, by default.
DEFAULT_QUARANTINE_KEEP = 100
DEFAULT_QUARANTINE_WINDOW_S = 60.0

#: The one key (and metric label) shared by every DPU id the topology does not know.
UNKNOWN_DPU = "unknown"


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most ``rate`` messages per second per DPU on average, with bursts of ``burst``."""

    rate: float
    burst: float

    def __post_init__(self) -> None:
        if not (self.rate > 0 and self.burst >= 1):
            raise ValueError(
                f"a DPU rate limit needs a rate above 0 and a burst of at least 1, got {self}"
            )


class TokenBucket:
    """``burst`` tokens, refilled at ``rate`` per second; :meth:`take` spends one if there is
    one. Times are seconds on a monotonic clock."""

    __slots__ = ("_at", "_tokens", "limit")

    def __init__(self, limit: RateLimit, now: float) -> None:
        self.limit = limit
        self._tokens = limit.burst
        self._at = now

    def take(self, now: float) -> bool:
        elapsed = max(0.0, now - self._at)
        self._at = now
        self._tokens = min(self.limit.burst, self._tokens + elapsed * self.limit.rate)
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False


class DpuRateLimiter:
    """One :class:`TokenBucket` per DPU the topology knows (``known``), one shared by all
    others. ``limit`` ``None`` lets everything through."""

    def __init__(
        self,
        limit: RateLimit | None,
        *,
        known: Callable[[str], bool],
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self._known = known
        self._monotonic = monotonic
        self._buckets: dict[str, TokenBucket] = {}

    def key(self, dpu_id: str) -> str:
        """The DPU's key: its id when the topology knows it, else :data:`UNKNOWN_DPU`."""
        return dpu_id if self._known(dpu_id) else UNKNOWN_DPU

    def allow(self, dpu_id: str) -> bool:
        """Whether a message from ``dpu_id`` is within its DPU's limit (spending a token)."""
        if self.limit is None:
            return True
        key = self.key(dpu_id)
        now = self._monotonic()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.limit, now)
        return bucket.take(now)


class QuarantineBudget:
    """At most ``keep`` quarantine entries per (DPU key, reason) per ``window_s`` seconds.

    :meth:`admit` says whether an entry may be stored. The first refusal of a key in a window
    returns a sentence to log (once per key and window); later ones return nothing, and the
    caller counts them in a metric. Windows are fixed: all counts start again together.
    """

    def __init__(
        self,
        keep: int,
        window_s: float,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if keep < 0 or window_s <= 0:
            raise ValueError(f"a quarantine budget needs keep >= 0 and window_s > 0, got {keep}")
        self.keep = keep
        self.window_s = window_s
        self._monotonic = monotonic
        self._started = monotonic()
        self._kept: dict[tuple[str, str], int] = {}

    def admit(self, key: str, reason: str) -> tuple[bool, str | None]:
        """``(stored, note)``: whether this entry fits the window's budget for ``key`` and
        ``reason``, and, the first time it does not in this window, a sentence to log."""
        now = self._monotonic()
        if now - self._started >= self.window_s:
            self._started = now
            self._kept.clear()
        n = self._kept.get((key, reason), 0)
        self._kept[(key, reason)] = n + 1
        if n < self.keep:
            return True, None
        if n > self.keep:
            return False, None
        return False, (
            f"quarantine keeps at most {self.keep} entries per DPU and reason every"
            f" {self.window_s:g} s: DPU {key!r} reached it for reason {reason!r}; more of those"
            " are refused as before but not stored, counted in headcount_quarantine_suppressed"
            " (see --quarantine-keep)"
        )
