"""The wall clock, read in one place.

Code that needs the time takes a :data:`Clock` (defaulting to :func:`now_ms`), so tests run it
under a clock they choose and no answer depends on the date the suite runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["Clock", "now_ms"]

#: A source of the current time in milliseconds since the epoch (UTC).
Clock = Callable[[], int]


def now_ms() -> int:
    """The wall clock's time in milliseconds since the epoch (UTC)."""
    return time.time_ns() // 1_000_000
