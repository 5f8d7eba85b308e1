"""Exact answers for any moment from snapshots and the event log, and keeping snapshots."""

from headcount.history.counts import (
    DEFAULT_SNAPSHOT_EVERY,
    DEFAULT_SNAPSHOT_LAG_MS,
    History,
    SpaceCount,
)
from headcount.history.events import SpaceView, space_events

__all__ = [
    "DEFAULT_SNAPSHOT_EVERY",
    "DEFAULT_SNAPSHOT_LAG_MS",
    "History",
    "SpaceCount",
    "SpaceView",
    "space_events",
]
