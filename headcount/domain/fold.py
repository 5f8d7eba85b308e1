"""The fold: the one rule every count follows.

A space's count at time T is the fold, in :func:`~headcount.domain.events.fold_key` order, of
every event touching the space with ``ts <= T``: deltas add, resets set, the daily reset sets the
count to zero at the space's local reset time, and unless the space allows negatives the count
never goes below zero after any event. Entrances and exits count every delta, floor or not.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from headcount.domain.events import Delta, Reset, SpaceEvent
from headcount.domain.timefmt import from_ms, to_ms
from headcount.domain.topology import Space


@dataclass(frozen=True, slots=True)
class SpaceState:
    """A space's folded state. ``as_of`` is the time of the last event or reset folded in
    (``None`` before anything was folded); every event up to it that was given has been applied.
    """

    as_of: int | None = None
    count: int = 0
    entrances: int = 0
    exits: int = 0


EMPTY = SpaceState()


def fold(space: Space, state: SpaceState, event: SpaceEvent) -> SpaceState:
    """Apply one event to ``state``. Events must come in fold order; one older than
    ``state.as_of`` is a caller's bug and raises ``ValueError``."""
    state = advance(space, state, event.ts)
    if isinstance(event, Reset):
        return SpaceState(state.as_of, event.count, state.entrances, state.exits)
    return _apply_delta(space, state, event)


def _apply_delta(space: Space, state: SpaceState, event: Delta) -> SpaceState:
    count = state.count + event.delta
    if count < 0 and not space.allow_negative:
        count = 0
    if event.delta > 0:
        return SpaceState(state.as_of, count, state.entrances + 1, state.exits)
    return SpaceState(state.as_of, count, state.entrances, state.exits + 1)


def fold_all(space: Space, state: SpaceState, events: Iterable[SpaceEvent]) -> SpaceState:
    """Fold ``events`` (already in fold order) into ``state``."""
    for event in events:
        state = fold(space, state, event)
    return state


def advance(space: Space, state: SpaceState, ts: int) -> SpaceState:
    """Move ``state`` forward to ``ts`` with no events: only a daily reset can happen."""
    if state.as_of is not None:
        if ts < state.as_of:
            raise ValueError(f"fold out of order: event at {ts} after state as of {state.as_of}")
        if (
            space.daily_reset is not None
            and state.count != 0
            and last_daily_reset(space, ts) > state.as_of
        ):
            return SpaceState(ts, 0, state.entrances, state.exits)
    if state.as_of == ts:
        return state
    # Built directly: dataclasses.replace() is several times slower, and this is the hot path.
    return SpaceState(ts, state.count, state.entrances, state.exits)


def last_daily_reset(space: Space, ts: int) -> int:
    """The newest daily reset instant at or before ``ts`` (ms). The space must have one."""
    reset_at = space.daily_reset
    if reset_at is None:
        raise ValueError(f"space {space.id!r} has no daily reset")
    zone = ZoneInfo(space.time_zone)
    local_day = from_ms(ts).astimezone(zone).date()
    instant = daily_reset_instant(space.time_zone, local_day, reset_at)
    if instant > ts:
        instant = daily_reset_instant(space.time_zone, local_day - timedelta(days=1), reset_at)
    return instant


@lru_cache(maxsize=65_536)
def daily_reset_instant(time_zone: str, day: date, at: time) -> int:
    """The instant (ms) of a space's daily reset on local date ``day``: the first instant at
    which the local clock reads ``at`` or later that day. On a day the clock skips ``at``
    (spring forward), that is the instant of the jump; on a day it repeats ``at`` (fall back),
    the first time it reads it. So the reset happens exactly once every local day."""
    zone = ZoneInfo(time_zone)
    wall = datetime.combine(day, at)
    first = to_ms(wall.replace(tzinfo=zone, fold=0))
    if _wall(first, zone) == wall:
        return first
    # ``at`` falls in a gap: the clock jumps over it somewhere in (earliest, first].
    low = to_ms(wall.replace(tzinfo=zone, fold=1))
    high = first
    while high - low > 1:
        mid = (low + high) // 2
        if _wall(mid, zone) >= wall:
            high = mid
        else:
            low = mid
    return high


def _wall(ms: int, zone: ZoneInfo) -> datetime:
    return datetime.fromtimestamp(ms // 1000, zone).replace(tzinfo=None) + timedelta(
        milliseconds=ms % 1000
    )
