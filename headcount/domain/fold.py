"""The fold: the one rule every count follows.

A space's count at time T is the fold, in :func:`~headcount.domain.events.fold_key` order, of
every event touching the space with ``ts <= T``: deltas add, resets set, the daily reset sets the
count to zero at the space's local reset time, and unless the space allows negatives the count
never goes below zero after any event. Entrances and exits count every delta, floor or not.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
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
    return daily_reset_window(space, ts)[0]


def daily_reset_window(space: Space, ts: int) -> tuple[int, int]:
    """The newest daily reset instant at or before ``ts`` and the next one after it: every
    time in ``[first, second)`` has the same last daily reset. The space must have one."""
    reset_at = space.daily_reset
    if reset_at is None:
        raise ValueError(f"space {space.id!r} has no daily reset")
    zone = ZoneInfo(space.time_zone)
    day = from_ms(ts).astimezone(zone).date()
    instant = daily_reset_instant(space.time_zone, day, reset_at)
    if instant > ts:
        day -= timedelta(days=1)
        instant = daily_reset_instant(space.time_zone, day, reset_at)
    return instant, daily_reset_instant(space.time_zone, day + timedelta(days=1), reset_at)


class Folder:
    """One space's fold kept in place: the rule of :func:`fold`, for long passes over many
    events (a replay) where a new state object per event would cost more than the rule.
    Feed it events in fold order with :meth:`delta` and :meth:`reset`; read :meth:`state`."""

    __slots__ = ("_daily", "_floor", "_window", "as_of", "count", "entrances", "exits", "space")

    def __init__(self, space: Space, state: SpaceState = EMPTY) -> None:
        self.space = space
        self.as_of = state.as_of
        self.count = state.count
        self.entrances = state.entrances
        self.exits = state.exits
        self._floor = not space.allow_negative
        self._daily = space.daily_reset is not None
        #: A span of times sharing one last daily reset, ``(last, next)``; empty at first.
        self._window = (0, 0)

    def state(self) -> SpaceState:
        return SpaceState(self.as_of, self.count, self.entrances, self.exits)

    def delta(self, ts: int, delta: int) -> None:
        """Fold a traversal's delta (+1 or -1) at ``ts``."""
        as_of = self.as_of
        if self._daily or as_of is None or ts < as_of:
            self._advance(ts)
        else:
            self.as_of = ts  # what _advance does in the common case, without the call
        count = self.count + delta
        if count < 0 and self._floor:
            count = 0
        self.count = count
        if delta > 0:
            self.entrances += 1
        else:
            self.exits += 1

    def fold_rows(self, rows: Iterable[Sequence[int]], reset_kind: int) -> int:
        """Fold rows ``(kind, ts, value)`` in fold order: a reset to ``value`` where
        ``kind`` is ``reset_kind``, else a delta ``value`` (+1 or -1). The same as calling
        :meth:`reset` and :meth:`delta` for each, in one loop for spaces without a daily reset
        (a past answer's tail). Returns how many rows were folded."""
        return self.fold_range(rows, reset_kind, self.count, self.count)[0]

    def fold_range(
        self, rows: Iterable[Sequence[int]], reset_kind: int, low: int, high: int
    ) -> tuple[int, int, int]:
        """Fold rows as :meth:`fold_rows` does; returns how many were folded and the lowest
        and highest of ``low``, ``high`` and the count after each row (a series' bucket)."""
        if self.space.daily_reset is not None:
            folded = 0
            for kind, ts, value in rows:
                if kind == reset_kind:
                    self.reset(ts, value)
                else:
                    self.delta(ts, value)
                folded += 1
                count = self.count
                if count < low:
                    low = count
                elif count > high:
                    high = count
            return folded, low, high
        as_of, count, entrances, exits, floor = (
            self.as_of,
            self.count,
            self.entrances,
            self.exits,
            self._floor,
        )
        folded = 0
        try:
            for kind, ts, value in rows:
                if as_of is not None and ts < as_of:
                    raise ValueError(f"fold out of order: event at {ts} after state as of {as_of}")
                as_of = ts
                folded += 1
                if kind == reset_kind:
                    count = value
                else:
                    count += value
                    if count < 0 and floor:
                        count = 0
                    if value > 0:
                        entrances += 1
                    else:
                        exits += 1
                if count < low:
                    low = count
                elif count > high:
                    high = count
        finally:
            self.as_of, self.count, self.entrances, self.exits = as_of, count, entrances, exits
        return folded, low, high

    def reset(self, ts: int, count: int) -> None:
        """Fold a reset to ``count`` at ``ts``."""
        self._advance(ts)
        self.count = count

    def advance(self, ts: int) -> None:
        """Move forward to ``ts`` with no event, as :func:`advance` does: only a daily reset
        can happen."""
        self._advance(ts)

    def _advance(self, ts: int) -> None:
        as_of = self.as_of
        if as_of is not None:
            if ts < as_of:
                raise ValueError(f"fold out of order: event at {ts} after state as of {as_of}")
            if self.space.daily_reset is not None and self.count != 0:
                last, upcoming = self._window
                if not last <= ts < upcoming:
                    last, upcoming = self._window = daily_reset_window(self.space, ts)
                if last > as_of:
                    self.count = 0
        self.as_of = ts


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
