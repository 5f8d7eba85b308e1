"""Time series: a space's counts in buckets of local wall-clock time, in one pass.

A series is read as a past answer is (``History.count_at``): the newest usable snapshot at or
before the first bucket, then the log from it through the last bucket, in fold order, in one
read transaction. The events before the first bucket only bring the state up to its start;
the rest are folded with the one fold rule (``domain.fold``) and each closes the buckets it
is past. The daily resets inside the window are items of the pass too, at their instants
(before the events of their millisecond, as the fold applies them).

Buckets follow the wall clock of a time zone. ``1m``, ``5m``, ``15m`` and ``1h`` buckets start
at every instant the local clock reads a multiple of the interval since midnight: across a
DST change an ``1h`` series has 23 or 25 buckets that day (the hour the clock skips is no
bucket; the hour it repeats is two). ``1d`` buckets run from local midnight to local midnight
(23 or 25 hours on the days of a change); ``1w`` buckets from Monday 00:00 local to the next.
Where a clock skips midnight, the day starts at the jump.

What a bucket ``[start, end)`` holds (see :class:`Bucket`): ``count``, the fold of every
event before ``end`` (the answer of ``count_at(end - 1)``); ``min`` and ``max`` over the count
it started with and the count after each event in it; ``entrances`` and ``exits``, its
traversals whose delta for the space was +1 and -1 (counted as the fold counts them, floor or
not); ``events``, its traversals, manual resets and daily resets. A daily reset is an event
every day at its instant, whatever the count was (a count of zero stays zero).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from operator import itemgetter
from typing import Any, Final, NamedTuple
from zoneinfo import ZoneInfo

from headcount.domain.fold import (
    EMPTY,
    Folder,
    SpaceState,
    daily_reset_instant,
    daily_reset_window,
)
from headcount.domain.rollups import BUCKET_MS, Rollup, RollupBuilder, apply_rollup
from headcount.domain.timefmt import from_ms, to_ms
from headcount.domain.topology import Space
from headcount.eventstore.answers import KIND, LATE, RESET, ROLLUP, STORED_RESET
from headcount.history.counts import History
from headcount.history.events import SpaceView

__all__ = [
    "INTERVALS",
    "MAX_PAGE_SIZE",
    "Bucket",
    "BucketFold",
    "Page",
    "boundaries",
    "bucket_page",
    "series",
]

#: The intervals a series is asked in, with their length where it is fixed in wall-clock time
#: below a day (``None``: whole local days, ``1d``, or weeks from Monday, ``1w``).
INTERVALS: Final[dict[str, int | None]] = {
    "1m": 60_000,
    "5m": 300_000,
    "15m": 900_000,
    "1h": 3_600_000,
    "1d": None,
    "1w": None,
}
#: Buckets in one page: by default and at most.
DEFAULT_PAGE_SIZE: Final = 1_000
MAX_PAGE_SIZE: Final = 10_000

_DAY_MS = 86_400_000
#: Gaps in a series' rollups nearer than this are read from the log together; with more
#: reads than this, the series is one read of the whole window instead.
_NEAR_MS = 3_600_000
_MAX_READS = 4
_ts = itemgetter(1)
_MIDNIGHT = time(0, 0)


class Bucket(NamedTuple):
    """One bucket ``[start, end)`` of a space's series (ms since the epoch, UTC). A tuple: a
    page holds up to ten thousand."""

    start: int
    end: int
    count: int  # type: ignore[assignment]  # the field, not tuple.count
    min: int
    max: int
    entrances: int
    exits: int
    events: int


@dataclass(frozen=True, slots=True)
class Page:
    """The bucket boundaries of one page: ``bounds[i]`` to ``bounds[i + 1]`` is bucket ``i``.
    ``next_start`` is the start of the first bucket of the next page, ``None`` on the last."""

    bounds: tuple[int, ...]
    next_start: int | None


def day_start(time_zone: str, day: date) -> int:
    """The first instant of local date ``day`` in ``time_zone``: its midnight, or where the
    clock skips midnight, the jump."""
    return daily_reset_instant(time_zone, day, _MIDNIGHT)


def _local_date(zone: ZoneInfo, ms: int) -> date:
    return from_ms(ms).astimezone(zone).date()


def _day_bounds(time_zone: str, zone: ZoneInfo, day: date, step: int) -> list[int]:
    """The instants in local date ``day`` at which the clock reads a multiple of ``step`` ms
    since midnight, and the day's first instant."""
    first = day_start(time_zone, day)
    after = day_start(time_zone, day + timedelta(days=1))
    if (
        after - first == _DAY_MS
        and from_ms(first).astimezone(zone).utcoffset()
        == from_ms(after - 1).astimezone(zone).utcoffset()
    ):
        return list(range(first, after, step))  # no change of offset that day
    found = {first}
    midnight = datetime.combine(day, _MIDNIGHT)
    for k in range(_DAY_MS // step):
        wall = midnight + timedelta(milliseconds=k * step)
        for repeated in (0, 1):  # an hour the clock repeats has two instants per reading
            ms = to_ms(wall.replace(tzinfo=zone, fold=repeated))
            if first <= ms < after and from_ms(ms).astimezone(zone).replace(tzinfo=None) == wall:
                found.add(ms)
    return sorted(found)


def boundaries(interval: str, time_zone: str, start: int) -> Iterator[int]:
    """The bucket boundaries of ``interval`` in ``time_zone`` from the one at or before
    ``start`` onwards, without end."""
    zone = ZoneInfo(time_zone)
    step = INTERVALS[interval]
    day = _local_date(zone, start)
    if step is None:
        days = 7 if interval == "1w" else 1
        if interval == "1w":
            day -= timedelta(days=day.weekday())
        while True:
            yield day_start(time_zone, day)
            day += timedelta(days=days)
    bounds = _day_bounds(time_zone, zone, day, step)
    yield max(b for b in bounds if b <= start)
    while True:
        for b in bounds:
            if b > start:
                yield b
        day += timedelta(days=1)
        bounds = _day_bounds(time_zone, zone, day, step)


def bucket_page(interval: str, time_zone: str, start: int, end: int, page_size: int) -> Page:
    """The buckets of ``interval`` in ``time_zone`` from the one holding ``start`` to the one
    holding ``end - 1``, at most ``page_size`` of them."""
    if end <= start:
        raise ValueError("a series needs start < end")
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise ValueError(f"page_size must be 1 to {MAX_PAGE_SIZE}")
    bounds: list[int] = []
    for b in boundaries(interval, time_zone, start):
        bounds.append(b)
        if b >= end:
            return Page(tuple(bounds), None)
        if len(bounds) == page_size + 1:
            return Page(tuple(bounds), b)
    raise AssertionError("boundaries() does not end")  # pragma: no cover


class BucketFold:
    """One pass of the fold over a series' buckets. Start it from a state of the space before
    ``bounds[0]`` (a snapshot's, say), give it every event after that state up to
    ``bounds[-1]`` (exclusive) in fold order as rows ``(kind, ts, value)`` (``kind``
    :data:`RESET`, ``value`` the count set, or a traversal, ``value`` its delta to the space)
    with :meth:`rows`; :meth:`finish` closes the buckets left and returns them. The fold is
    ``domain.fold.Folder``'s; the events before ``bounds[0]`` only bring it up to the start.
    """

    def __init__(self, space: Space, state: SpaceState, bounds: Sequence[int]) -> None:
        if len(bounds) < 2:
            raise ValueError("a series needs at least one bucket")
        self.folder = Folder(space, state)
        self.bounds = bounds
        self.buckets: list[Bucket] = []
        self._counting = False
        #: The next time at which something other than folding happens: the window's start,
        #: then the sooner of the open bucket's end and the next daily reset.
        self._stop = bounds[0]
        self._daily: int | None = None
        self._start = self._end = 0
        self._min = self._max = self._events = self._entrances = self._exits = 0

    def rows(self, rows: Sequence[Sequence[int]]) -> None:
        """Fold rows in fold order, each after the state so far and before ``bounds[-1]``:
        each run of them up to the next bucket end or daily reset in one call of the fold."""
        folder = self.folder
        i, n = 0, len(rows)
        while i < n:
            if rows[i][1] >= self._stop:
                self._reach(rows[i][1])
            j = bisect_left(rows, self._stop, i, n, key=_ts)  # > i: _reach moved the stop
            if self._counting:
                folded, self._min, self._max = folder.fold_range(
                    rows[i:j], RESET, self._min, self._max
                )
                self._events += folded
            else:
                folder.fold_rows(rows[i:j], RESET)
            i = j

    def finish(self) -> list[Bucket]:
        """Close every bucket left; the series."""
        self._reach(self.bounds[-1])
        return self.buckets

    def _reach(self, ts: int) -> None:
        """Before folding an event at ``ts`` (or at the end, ``bounds[-1]``): start the
        buckets if ``ts`` is in the window, fold the daily resets at or before it (they come
        first in their millisecond), close the buckets that end at or before it."""
        folder = self.folder
        if not self._counting:
            if ts < self.bounds[0]:
                return
            folder.advance(self.bounds[0] - 1)
            space = folder.space
            if space.daily_reset is not None:
                last, upcoming = daily_reset_window(space, self.bounds[0])
                self._daily = last if last == self.bounds[0] else upcoming
            self._counting = True
            self._open(folder.count)
        while True:
            daily = self._daily
            while daily is not None and daily <= ts and daily < self._end:
                folder.advance(daily)
                count = folder.count
                self._events += 1
                self._min, self._max = min(self._min, count), max(self._max, count)
                daily = self._daily = daily_reset_window(folder.space, daily)[1]
            if ts < self._end:
                break
            self._close()
            if len(self.buckets) == len(self.bounds) - 1:
                self._stop = self.bounds[-1] + 1  # done: nothing more may come
                return
            self._open(folder.count)
        self._stop = self._end if daily is None else min(self._end, daily)

    def _open(self, count: int) -> None:
        i = len(self.buckets)
        self._start, self._end = self.bounds[i], self.bounds[i + 1]
        self._min = self._max = count
        self._events = 0
        self._entrances, self._exits = self.folder.entrances, self.folder.exits

    def _close(self) -> None:
        folder = self.folder
        self.buckets.append(
            Bucket(
                self._start,
                self._end,
                folder.count,
                self._min,
                self._max,
                folder.entrances - self._entrances,
                folder.exits - self._exits,
                self._events,
            )
        )


async def series(history: History, space_id: str, bounds: Sequence[int]) -> list[Bucket]:
    """The buckets ``bounds[i]`` to ``bounds[i + 1]`` of a space. Where the space has rollups
    in the window and the buckets are made of five-minute ones: the count before the first
    bucket and one rollup per five minutes (:func:`_from_rollups`). Else the newest usable
    snapshot before the first bucket, the log from it through the last, one fold, in one
    statement through the driver (``EventStore.answers``) or, where that cannot answer, in one
    read transaction of the general path (as ``History.count_at`` does)."""
    space = history.topology.space(space_id)
    view = SpaceView.of(history.topology, space_id)
    if all(b % BUCKET_MS == 0 for b in bounds):
        rolled = await _from_rollups(history, space, view, bounds)
        if rolled is not None:
            return rolled
    first, last = bounds[0], bounds[-1]
    async with history.store.answers.snapshot_window(
        space_id, view.fingerprint, view.sources, before=first, end=last
    ) as window:
        if window is not None:
            buckets = BucketFold(space, window.state, bounds)
            async for batch in window.batches:
                buckets.rows(batch)
            return buckets.finish()
    async with history.store.log.reading() as within:
        base = await history.usable_snapshot(view, at_or_before=first - 1, within=within)
        buckets = BucketFold(space, EMPTY if base is None else base.state, bounds)
        async for rows in history.store.log.space_rows(
            space_id,
            view.sources,
            after=None if base is None else base.as_of,
            until=last - 1,
            within=within,
        ):
            buckets.rows(rows)
    return buckets.finish()


async def _from_rollups(
    history: History, space: Space, view: SpaceView, bounds: Sequence[int]
) -> list[Bucket] | None:
    """The series from the space's stored rollups: the count just before the first bucket
    (``History.count_at``), then each five minutes' rollup applied to the count so far. A
    rollup that a late traversal or a reset stored after it makes wrong is not used; the
    stretches without a usable rollup are rolled up from the log's rows as the series is
    asked. ``None`` when the space has no usable rollup in the window (the caller folds the
    log, as fast as this for those rows)."""
    start, end = bounds[0], bounds[-1]
    found = await history.store.answers.rollups(
        space.id, view.fingerprint, view.sources, start=start, end=end
    )
    if not found:
        return None
    rolled: list[Any] = []  # tuples from sqlite3, records from asyncpg: both slice to tuples
    late: list[tuple[int, int]] = []  # (ts, position) of late traversals
    spoiled: list[tuple[int, int]] = []  # (ts, id) of resets
    replayed: list[tuple[int | None, int]] = []  # (from_ts, generation) of finished replays
    for row in found:
        kind = row[KIND]
        if kind == ROLLUP:
            rolled.append(row)
        elif kind == LATE:
            late.append((row[0], row[1]))
        elif kind == STORED_RESET:
            spoiled.append((row[0], row[1]))
        else:
            replayed.append((row[0], row[1]))
    late.sort()
    spoiled.sort()
    rolled.sort(key=_newest_first)
    newest_replay = max((generation for _, generation in replayed), default=0)
    check = bool(late or spoiled)
    pieces: list[Sequence[Any]] = []  # stored rows: a rollup's fields first
    gaps: list[tuple[int, int]] = []
    cursor = start
    for row in rolled:
        begins, ends, events = row[0], row[1], row[2]
        if ends <= cursor or (begins < cursor and events):
            continue  # an older copy of one already taken
        position, reset_id, _, generation = row[KIND + 1 :]
        if generation < newest_replay and _superseded(ends, generation, replayed):
            continue
        if check and _stale(begins, ends, position, reset_id, late, spoiled):
            continue
        if begins > cursor:
            gaps.append((cursor, begins))
        pieces.append(row)
        cursor = ends
    if not pieces:
        return None
    if cursor < end:
        gaps.append((cursor, end))
    if gaps:
        filled = await _fill(history, space, view, pieces, gaps)
        if filled is None:
            return None
        pieces = filled
    before = await history.count_at(space.id, start - 1)
    return _apply(pieces, before.count, not space.allow_negative, bounds)


def _newest_first(row: Sequence[Any]) -> tuple[int, int]:
    """A rollup row's place: by start, then the newest copy first."""
    return row[0], -row[KIND + 3]


def _superseded(end: int, generation: int, replayed: list[tuple[int | None, int]]) -> bool:
    """Whether a finished replay of a later generation began folding before a rollup's end
    (``eventstore.rollups.SUPERSEDED_ROLLUP``)."""
    return any(later > generation and (began is None or began < end) for began, later in replayed)


def _stale(
    start: int,
    end: int,
    position: int,
    reset_id: int,
    late: list[tuple[int, int]],
    resets: list[tuple[int, int]],
) -> bool:
    """Whether a late traversal or a reset in a rollup's time ``[start, end)`` was stored
    after it (after log ``position`` and reset ``reset_id``)."""
    for found, newer_than in ((late, position), (resets, reset_id)):
        i = bisect_left(found, (start, -1))
        while i < len(found) and found[i][0] < end:
            if found[i][1] > newer_than:
                return True
            i += 1
    return False


async def _fill(
    history: History,
    space: Space,
    view: SpaceView,
    pieces: list[Sequence[Any]],
    gaps: list[tuple[int, int]],
) -> list[Sequence[Any]] | None:
    """``pieces`` with each gap rolled up from the log's rows, in time order: gaps less than
    an hour apart in one read. ``None`` when that takes more than a few reads (a window of
    many quiet stretches, or of rollups spoiled by many late events): one read of the whole
    window is faster then."""
    reads: list[tuple[int, int]] = []
    for a, b in gaps:
        if reads and a - reads[-1][1] < _NEAR_MS:
            reads[-1] = (reads[-1][0], b)
        else:
            reads.append((a, b))
    if len(reads) > _MAX_READS:
        return None
    made: list[Rollup] = []
    for first, last in reads:
        builder = RollupBuilder(space, first)
        async for rows in history.store.log.space_rows(
            space.id, view.sources, after=first - 1, until=last - 1
        ):
            builder.rows(rows, RESET)
        made += builder.close(last)
    filled = [_clip(r, a, b) for a, b in gaps for r in made if r.start < b and r.end > a]
    return sorted([*pieces, *filled], key=_start)


def _clip(rollup: Rollup, start: int, end: int) -> Rollup:
    """``rollup`` within ``[start, end)``: a stretch without events is cut to it."""
    if rollup.events or (rollup.start >= start and rollup.end <= end):
        return rollup
    return Rollup(max(rollup.start, start), min(rollup.end, end))


def _start(piece: Sequence[Any]) -> int:
    return int(piece[0])


def _apply(
    pieces: list[Sequence[Any]], count: int, floor: bool, bounds: Sequence[int]
) -> list[Bucket]:
    """The buckets of ``bounds`` from rollups tiling them (``Rollup``s, or stored rows that
    start with a rollup's fields), starting from ``count``."""
    buckets: list[Bucket] = []
    k, n = 0, len(pieces)
    for i in range(len(bounds) - 1):
        start, end = bounds[i], bounds[i + 1]
        low = high = count
        entrances = exits = events = 0
        while k < n and pieces[k][0] < end:
            piece = pieces[k]
            if piece[2]:
                count, lo, hi = apply_rollup(piece, count, floor)
                if lo < low:
                    low = lo
                if hi > high:
                    high = hi
                events += piece[2]
                entrances += piece[3]
                exits += piece[4]
            if piece[1] > end:
                break  # a stretch without events that goes on into the next bucket
            k += 1
        buckets.append(Bucket(start, end, count, low, high, entrances, exits, events))
    return buckets
