"""Rollups: what a space's events in one five-minute bucket do to any count it starts with.

A series asks, for every bucket, the count at its end, the lowest and highest count held in
it, and its entrances, exits and events. Folding the log's rows for that costs every row of
the window. A rollup stores one bucket's events as a function of the count the bucket starts
with (the fold rule makes it a small one), so a series is the count at its start plus one
rollup per bucket, however many events the buckets hold; and a late event spoils only the
rollup of its own bucket, not those after it.

The function. Before the bucket's first reset (manual or daily), a run of deltas with the floor
at zero takes a starting count ``c`` to ``max(c + shift, floor_end)`` after its last delta,
where ``shift`` is the sum of the deltas and ``floor_end`` what the run makes of a count of
zero; the highest count it holds is ``max(c + rise, floor_high)`` (``rise``, the highest
running sum, at least 0; ``floor_high``, the highest count from zero), and the lowest
``max(c + dip, 0)`` (``dip``, the lowest running sum, at most 0). Without the floor (a space
that allows negatives) they are ``c + shift``, ``c + rise`` and ``c + dip``. From the first
reset on, every count is known whatever ``c`` was: the count at the end (``reset_end``) and
the lowest and highest from that reset on (``reset_low``, ``reset_high``).

Buckets are five minutes of UTC, which every zone's wall clock of this era divides (offsets
are whole quarters of an hour), so any series of ``5m`` or longer buckets is made of them.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from operator import itemgetter
from typing import Any, NamedTuple

from headcount.domain.fold import daily_reset_window
from headcount.domain.topology import Space

__all__ = [
    "BUCKET_MS",
    "MAX_STRETCH_MS",
    "MIN_EVENTS",
    "Rollup",
    "RollupBuilder",
    "apply_rollup",
    "bucket_ceil",
    "bucket_floor",
]

BUCKET_MS = 300_000
#: The longest stretch without events one rollup stands for (a reader of a window finds its
#: rollups among those that start at most this long before it).
MAX_STRETCH_MS = 86_400_000
#: A run of events is worth rolling up when it holds at least this many a bucket on average
#: (:meth:`RollupBuilder.sparse`): a quiet space would store about a rollup an event, and a
#: reader folds a few of the log's rows as fast as a rollup.
MIN_EVENTS = 4
_row_ts = itemgetter(2)
_kind_ts = itemgetter(1)
#: How long a run of events must last for :meth:`RollupBuilder.sparse` to judge it.
_JUDGE_MS = 3_600_000


def bucket_floor(ts: int) -> int:
    """The start of the bucket holding ``ts``."""
    return ts - ts % BUCKET_MS


def bucket_ceil(ts: int) -> int:
    """The first bucket boundary at or after ``ts``."""
    return -(-ts // BUCKET_MS) * BUCKET_MS


class Rollup(NamedTuple):
    """The events of ``[start, end)`` as a function of the count before them (see the module's
    text). ``end - start`` is one bucket when it holds events; a stretch of buckets without
    any is one rollup with ``events == 0``. A tuple: a year of them is read at once."""

    start: int
    end: int
    events: int = 0
    entrances: int = 0
    exits: int = 0
    shift: int = 0
    rise: int = 0
    dip: int = 0
    floor_end: int = 0
    floor_high: int = 0
    reset_end: int | None = None
    reset_low: int | None = None
    reset_high: int | None = None

    def apply(self, count: int, floor: bool) -> tuple[int, int, int]:
        """The count after these events, and the lowest and highest held from ``count`` (the
        count before them) through each of them; ``floor``: the space's count stops at zero."""
        return apply_rollup(self, count, floor)


def apply_rollup(fields: Sequence[Any], count: int, floor: bool) -> tuple[int, int, int]:
    """:meth:`Rollup.apply` for a rollup's fields in :class:`Rollup`'s order, or a row that
    starts with them (a series applies stored rows without making a ``Rollup`` of each)."""
    shift, rise, dip, floor_end, floor_high, reset_end, low_set, high_set = fields[5:13]
    end, low, high = count + shift, count + dip, count + rise
    if floor:
        if end < floor_end:
            end = floor_end
        if low < 0:
            low = 0
        if high < floor_high:
            high = floor_high
    if reset_end is not None:
        end = reset_end
        if low_set < low:
            low = low_set
        if high_set > high:
            high = high_set
    return end, low, high


class RollupBuilder:
    """Rollups of one space from its events in fold order, starting at the bucket boundary
    ``start``: :meth:`delta` and :meth:`reset` for each event (the space's daily resets are
    added at their instants), :meth:`close` for the rollups that end by a time. The rollups
    made tile time from ``start`` on, without gaps."""

    __slots__ = (
        "_a",
        "_b",
        "_bucket",
        "_daily",
        "_dip",
        "_e",
        "_events",
        "_exits",
        "_floor",
        "_high",
        "_in_reset",
        "_low",
        "_q",
        "_rise",
        "_ups",
        "done",
        "made",
        "space",
    )

    def __init__(self, space: Space, start: int) -> None:
        if start % BUCKET_MS:
            raise ValueError(f"rollups start at a bucket boundary, not at {start}")
        self.space = space
        self._floor = not space.allow_negative
        #: Rollups made, in time order, and where the next one starts.
        self.made: list[Rollup] = []
        self.done = start
        self._bucket = start
        self._daily: int | None = None
        if space.daily_reset is not None:
            last, upcoming = daily_reset_window(space, start)
            self._daily = last if last == start else upcoming
        self._clear()

    def _clear(self) -> None:
        self._events = self._ups = self._exits = 0
        self._a = self._rise = self._dip = self._b = self._q = 0
        self._in_reset = False
        self._e = self._low = self._high = 0

    def _reach(self, ts: int) -> None:
        """Before an event at ``ts``: close the bucket it is past and fold the daily resets
        at or before it (they come first in their millisecond)."""
        while True:
            daily = self._daily
            step = ts if daily is None or daily > ts else daily
            if step >= self._bucket + BUCKET_MS:
                self._close_bucket(bucket_floor(step))
            if daily is None or daily > ts:
                return
            self._set(0)
            self._daily = daily_reset_window(self.space, daily)[1]

    def _close_bucket(self, upto: int) -> None:
        """Close the open bucket and the empty stretch after it up to ``upto`` (a boundary)."""
        end = self._bucket + BUCKET_MS
        if self._events:
            self.made.append(
                Rollup(
                    self._bucket,
                    end,
                    self._events,
                    self._ups,
                    self._exits,
                    self._a,
                    self._rise,
                    self._dip,
                    self._b,
                    self._q,
                    self._e if self._in_reset else None,
                    self._low if self._in_reset else None,
                    self._high if self._in_reset else None,
                )
            )
            self._clear()
        else:
            end = self._bucket
        made = self.made
        while upto > end:  # a stretch without events: one rollup, at most a day long
            last = made[-1] if made else None
            if last and not last.events and last.end == end and end - last.start < MAX_STRETCH_MS:
                start = made.pop().start
            else:
                start = end
            end = min(upto, start + MAX_STRETCH_MS)
            made.append(Rollup(start, end))
        self._bucket = upto
        self.done = upto

    def _set(self, count: int) -> None:
        self._events += 1
        if self._in_reset:
            self._e = count
            self._low = min(self._low, count)
            self._high = max(self._high, count)
        else:
            self._in_reset = True
            self._e = self._low = self._high = count

    def delta(self, ts: int, delta: int) -> None:
        """A traversal's delta (+1 or -1) to the space at ``ts``."""
        if ts >= self._bucket + BUCKET_MS or (self._daily is not None and self._daily <= ts):
            self._reach(ts)
        self._events += 1
        if delta > 0:
            self._ups += 1
        else:
            self._exits += 1
        if self._in_reset:
            e = self._e + delta
            if e < 0 and self._floor:
                e = 0
            self._e = e
            if e < self._low:
                self._low = e
            elif e > self._high:
                self._high = e
            return
        a = self._a = self._a + delta
        if a > self._rise:
            self._rise = a
        elif a < self._dip:
            self._dip = a
        b = self._b + delta
        if b < 0:
            b = 0
        self._b = b
        if b > self._q:
            self._q = b

    def traversals(self, rows: Sequence[Sequence[Any]], start: int, end: int) -> None:
        """The deltas of ``rows[start:end]``, rows ``(dpu_id, seq, ts, delta)`` in time order
        (a replay's): what :meth:`delta` does for each, a bucket's run in one loop."""
        self._deltas(rows, start, end, 2)

    def _deltas(self, rows: Sequence[Sequence[Any]], start: int, end: int, at: int) -> None:
        """:meth:`traversals` for rows with the time at ``at`` and the delta after it."""
        key = _row_ts if at == 2 else _kind_ts
        if start < end and rows[start][at] < self._bucket:
            raise ValueError(f"an event at {rows[start][at]} before the open bucket")
        i = start
        while i < end:
            ts = rows[i][at]
            daily = self._daily
            if ts >= self._bucket + BUCKET_MS or (daily is not None and daily <= ts):
                self._reach(ts)
                daily = self._daily
            stop = self._bucket + BUCKET_MS
            if daily is not None and daily < stop:
                stop = daily
            j = bisect_left(rows, stop, i, end, key=key)
            if self._in_reset:
                for row in rows[i:j]:
                    self.delta(row[at], row[at + 1])
                i = j
                continue
            a, rise, dip, b, q, ups = self._a, self._rise, self._dip, self._b, self._q, self._ups
            for row in rows[i:j]:
                delta = row[at + 1]
                a += delta
                if a > rise:
                    rise = a
                elif a < dip:
                    dip = a
                b += delta
                if b < 0:
                    b = 0
                elif b > q:
                    q = b
                if delta > 0:
                    ups += 1
            self._a, self._rise, self._dip, self._b, self._q = a, rise, dip, b, q
            self._exits += (j - i) - (ups - self._ups)
            self._ups = ups
            self._events += j - i
            i = j

    def sparse(self, count: int, first: int, last: int) -> bool:
        """Whether ``count`` events from ``first`` to ``last``, over more than an hour, are
        too few to be worth rolling up (fewer than :data:`MIN_EVENTS` a bucket on average): a
        writer then calls :meth:`skip_past` instead of giving them, and a quiet space costs it
        no bucket's work per event. A shorter run says too little (a busy bucket's events can
        come a few at a time)."""
        span = last - first
        return span > _JUDGE_MS and count * BUCKET_MS < MIN_EVENTS * (span + BUCKET_MS)

    def skip_past(self, ts: int) -> None:
        """Make no rollup up to the end of the bucket holding ``ts`` (nor of the bucket open
        now): they are left to the log. Events before that end must not be given after."""
        after = bucket_floor(ts) + BUCKET_MS
        if after <= self._bucket:
            return
        self._clear()
        self._bucket = self.done = after
        if self.space.daily_reset is not None:
            last, upcoming = daily_reset_window(self.space, after)
            self._daily = last if last == after else upcoming

    def reset(self, ts: int, count: int) -> None:
        """A reset of the count to ``count`` at ``ts``."""
        self._reach(ts)
        self._set(count)

    def rows(self, rows: Sequence[Sequence[int]], reset_kind: int) -> None:
        """Events as rows ``(kind, ts, value)`` (as ``Folder.fold_rows`` takes them), in time
        order: each run of traversals between resets as :meth:`traversals` folds them."""
        i = 0
        for k, row in enumerate(rows):
            if row[0] == reset_kind:
                self._deltas(rows, i, k, 1)
                self.reset(row[1], row[2])
                i = k + 1
        self._deltas(rows, i, len(rows), 1)

    def close(self, until: int) -> list[Rollup]:
        """Close every bucket that ends at or before ``until`` (a boundary) and return the
        rollups made since the last call. Events at or after ``until`` may have been given:
        the rollups of buckets they closed come too, so keep those that end by ``until``."""
        if until % BUCKET_MS:
            raise ValueError(f"rollups end at a bucket boundary, not at {until}")
        if until > self.done:
            self._reach(until - 1)  # the daily resets before it
            if until >= self._bucket + BUCKET_MS:
                self._close_bucket(until)
        made, self.made = self.made, []
        return made
