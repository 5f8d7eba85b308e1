"""Replay: fold the whole log again under a topology, in one ordered pass for every space.

A replay streams the traversal log once, in fold order, and routes each traversal through the
topology at its own time to the spaces it reaches, exactly as the live service does; manual
resets are merged in by time. Memory stays bounded by the number of spaces (plus the snapshots
waiting to be written), however long the log is.

Four uses share the pass:

- :meth:`Replay.run` writes the states as a new snapshot generation (the caller holds the
  store's lease alone). Once a space is finished, its older snapshots are superseded: still
  stored, never used again.
- :meth:`Replay.verify` folds from scratch and compares every snapshot that answers could be
  served from.
- :meth:`Replay.states_at` folds without writing and reports each space's state at chosen
  times (``headcount replay --dry-run``).
- :meth:`Replay.recover_at` gives each space its state at a checkpoint and the events after
  it: how a service with many spaces starts its actors.
"""

from __future__ import annotations

import asyncio
import logging
import time
from bisect import bisect_left, bisect_right
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from itertools import accumulate
from operator import itemgetter
from typing import Self

from headcount.clock import now_ms
from headcount.domain.events import Delta, Direction, Reset, SpaceEvent, space_delta
from headcount.domain.fold import Folder, SpaceState, advance
from headcount.domain.rollups import (
    Rollup,
    RollupBuilder,
    bucket_ceil,
    bucket_floor,
)
from headcount.domain.timefmt import format_ms
from headcount.domain.topology import Space, Topology
from headcount.eventstore.log import interleave_resets, reset_ts
from headcount.eventstore.records import Head, ReplayedSpace, Snapshot, StoredReset
from headcount.eventstore.store import EventStore
from headcount.gcpolicy import bulk_pass
from headcount.history.counts import (
    DEFAULT_SNAPSHOT_EVERY,
    DEFAULT_SNAPSHOT_LAG_MS,
    Cadence,
    History,
)
from headcount.history.events import SpaceView
from headcount.progress import Progress

log = logging.getLogger(__name__)

#: Snapshots are written in batches of this many while the log streams.
_FLUSH_EVERY = 5_000
#: Up to this many DPUs are filtered in the query; more are filtered while streaming.
_SQL_DPU_FILTER = 500
_BEFORE_ALL = -(2**62)

_AFTER_ALL = 2**62
#: Beyond the bounds of every route's span (``Topology.links_span``: ``±2**63``).
_BEFORE_ROUTES = -(2**64)
_AFTER_ROUTES = 2**64


#: A traversal log row: ``(dpu_id, seq, ts, direction)``; in a track's batch, the direction is
#: the delta to that space.
_Row = tuple[str, int | None, int, int]
#: The tracks a DPU's traversals reach, each with the delta by direction (shared by every DPU
#: over the same doorway).
_Reached = tuple[tuple["_Track", dict[int, Direction]], ...]
#: A DPU's route in a pass: from, until; the tracks it reaches; the topology's own copy of
#: the DPU's id (the rows' copies are dropped with their batch).
_Route = tuple[int, int, _Reached, str]
#: A traversal's delta to a space by its direction, for each placement of the DPU (shared by
#: every route: a pass over 200,000 DPUs made 200,000 of these).
_DELTAS: dict[int, dict[int, Direction]] = {
    placement: {d: space_delta(d, placement) for d in (1, -1)} for placement in (1, -1)
}
#: A batch is folded space by space (each space's rows in one loop) when it has at least this
#: many rows for each space of the pass, else event by event.
_ROWS_PER_SPACE = 8


#: A row's time and its delta (C calls: a bisect's key, a run's sum).
_row_ts = itemgetter(2)
_row_delta = itemgetter(3)


def _known(seq: int | None) -> int:
    """The seq of a row the pass keeps: the scan reads it for every such row."""
    if seq is None:
        raise RuntimeError("the log scan left out the seq of an event the pass keeps")
    return seq


def _fold_run(folder: Folder, rows: list[_Row], start: int, end: int) -> None:
    """Fold ``rows[start:end]`` (traversals of one space in time order, each row's direction
    its delta to the space, no daily reset) into ``folder``: the rule of ``Folder.delta``
    row by row, computed in bulk. The count moves by the sum of the deltas unless the floor
    can stop it (only when it starts below the run's length: then the lowest running sum
    says whether it does, and only then is the run folded row by row); of ``k`` deltas of +1
    or -1 summing to ``s``, ``(k + s) / 2`` are entrances."""
    first = rows[start][2]
    if folder.as_of is not None and first < folder.as_of:
        raise ValueError(f"fold out of order: event at {first} after state as of {folder.as_of}")
    run = rows[start:end]
    size = end - start
    total = sum(map(_row_delta, run))
    count = folder.count
    if (
        count < size
        and not folder.space.allow_negative
        and count + min(accumulate(map(_row_delta, run))) < 0
    ):
        for delta in map(_row_delta, run):
            count += delta
            if count < 0:
                count = 0
        folder.count = count
    else:
        folder.count = count + total
    entrances = (size + total) // 2
    folder.entrances += entrances
    folder.exits += size - entrances
    folder.as_of = rows[end - 1][2]


def _drop(row: _Row) -> None:
    """The hand of a DPU that reaches none of the spaces of the pass."""


def _fan(same: tuple[Callable[[_Row], None], ...], flipped: tuple[Callable[[_Row], None], ...],
         row: _Row) -> None:  # fmt: skip
    """The hand of a DPU that reaches several spaces, or one the other way round."""
    for add in same:
        add(row)
    if flipped:
        reversed_row = (row[0], row[1], row[2], -row[3])
        for add in flipped:
            add(reversed_row)


def _hand(route: _Route) -> Callable[[_Row], None]:
    """What hands a row on along ``route``: the one space's ``pending.append`` when the DPU
    reaches one space as it is mounted (the common case, called with no step between)."""
    same = tuple(t.adder() for t, deltas in route[2] if deltas[1] == 1)
    flipped = tuple(t.adder() for t, deltas in route[2] if deltas[1] == -1)
    if not flipped:
        if len(same) == 1:
            return same[0]
        if not same:
            return _drop
    return partial(_fan, same, flipped)


class _Hands:
    """Each DPU's hand (:func:`_hand`) over a run of batches in which no route changes: a
    row of a batch is routed by one lookup of its DPU, not by its route and the route's span.
    The hands hold while every batch lies within ``[start, end)``, the span common to their
    routes."""

    __slots__ = ("by_dpu", "end", "start")

    def __init__(self) -> None:
        self.by_dpu: dict[str, Callable[[_Row], None]] = {}
        self.start = _BEFORE_ROUTES
        self.end = _AFTER_ROUTES

    def clear(self) -> None:
        self.by_dpu.clear()
        self.start, self.end = _BEFORE_ROUTES, _AFTER_ROUTES

    def give(self, dpu_id: str, route: _Route) -> Callable[[_Row], None]:
        """The DPU's hand for batches within ``route``'s span, kept."""
        hand = self.by_dpu[dpu_id] = _hand(route)
        self.start = max(self.start, route[0])
        self.end = min(self.end, route[1])
        return hand


class _Router:
    """Each DPU's route during a pass (:data:`_Route`), looked up again only when a
    traversal falls outside its span. DPUs over the same doorway share what they reach, and
    a route keeps the topology's copy of its DPU's id: a recovery of 100,000 spaces holds
    200,000 routes until its end."""

    __slots__ = ("_reached", "_topology", "_tracks", "by_dpu")

    def __init__(self, topology: Topology, tracks: Mapping[str, _Track]) -> None:
        self.by_dpu: dict[str, _Route] = {}
        #: What the links of a doorway reach, by the identity of the topology's tuple of
        #: links (it holds them for the pass).
        self._reached: dict[int, _Reached] = {}
        self._topology = topology
        self._tracks = tracks

    def of(self, dpu_id: str, ts: int) -> _Route:
        """Where a traversal of ``dpu_id`` at ``ts`` goes."""
        route = self.by_dpu.get(dpu_id)
        if route is not None and route[0] <= ts < route[1]:
            return route
        links, start, end = self._topology.links_span(dpu_id, ts)
        reached = self._reached.get(id(links))
        if reached is None:
            tracks = self._tracks
            reached = self._reached[id(links)] = tuple(
                (track, _DELTAS[link.sensor_placement])
                for link in links
                if (track := tracks.get(link.space_id)) is not None
            )
        key = self._topology.dpu_key(dpu_id)
        route = self.by_dpu[key] = (start, end, reached, key)
        return route


@dataclass(frozen=True, slots=True)
class ReplaySummary:
    """What a pass did: ``rows`` traversals read from the log, ``events`` deltas and resets
    folded into spaces (a traversal through a doorway of nested spaces is several),
    ``snapshots`` written, in ``seconds``. ``generation`` is the snapshot generation written
    (``None`` when nothing was written)."""

    spaces: int
    rows: int
    events: int
    snapshots: int
    seconds: float
    generation: int | None = None

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "spaces": self.spaces,
            "events read": self.rows,
            "events folded": self.events,
            "snapshots written": self.snapshots,
            "seconds": round(self.seconds, 3),
            "events per second": round(self.rows_per_s),
            "generation": self.generation,
        }


@dataclass(frozen=True, slots=True)
class Mismatch:
    """A stored snapshot (or a live count) that differs from the fold of the log."""

    space_id: str
    at: int
    stored: SpaceState
    folded: SpaceState
    what: str = "snapshot"

    def describe(self) -> str:
        s, f = self.stored, self.folded
        return (
            f"space {self.space_id}: {self.what} at {format_ms(self.at)} says count={s.count}"
            f" entrances={s.entrances} exits={s.exits}; the log folds to count={f.count}"
            f" entrances={f.entrances} exits={f.exits}"
        )


class _Track:
    """One space's fold during a pass."""

    __slots__ = (
        "add",
        "after",
        "cadence",
        "checked",
        "checks",
        "covered",
        "events",
        "folder",
        "mismatches",
        "next_watch",
        "pending",
        "probed",
        "probes",
        "recent",
        "recent_after",
        "roll_from",
        "rolling",
        "sink",
        "space",
        "view",
        "written",
    )

    def __init__(
        self,
        space: Space,
        view: SpaceView,
        cadence: Cadence | None,
        sink: list[Snapshot],
    ) -> None:
        self.space = space
        self.view = view
        self.folder = Folder(space)
        self.cadence = cadence
        #: Where snapshots go until they are written (shared by every track of a pass).
        self.sink = sink
        #: Events at or before this time are already folded in (from a snapshot).
        self.after = _BEFORE_ALL
        self.events = 0
        self.written = 0
        #: ``states_at``: the times asked about (ascending) and the states found so far.
        self.probes: Sequence[int] = ()
        self.probed: list[SpaceState] = []
        #: ``verify``: stored snapshots to compare (ascending) and the differences found.
        self.checks: Sequence[Snapshot] = ()
        self.checked = 0
        self.mismatches: list[Mismatch] | None = None
        #: The time of the next probe or check to settle (see :meth:`reach`).
        self.next_watch = _AFTER_ALL
        #: This space's traversals of the batch being folded (see :meth:`fold_pending`) and
        #: ``pending.append``, made when a DPU's hand first needs them (:meth:`adder`): a pass
        #: that folds event by event over 100,000 spaces makes none.
        self.pending: list[_Row] | None = None
        self.add: Callable[[_Row], None] | None = None
        #: ``recover_at``: the events after this time, kept as they are folded.
        self.recent_after = _AFTER_ALL
        self.recent: list[SpaceEvent] = []
        #: ``run``: the space's rollups, made from the first event at or after ``roll_from``
        #: (a bucket boundary; ``None``: the first event's bucket; ``_AFTER_ALL``: none made,
        #: the passes that write nothing), and the time the snapshots taken so far cover
        #: (rollups are written only that far).
        self.rolling: RollupBuilder | None = None
        self.roll_from: int | None = _AFTER_ALL
        self.covered: int | None = None

    def roll(self) -> None:
        """Make the space's rollups as it is folded (a replay that writes)."""
        self.roll_from = None if self.after == _BEFORE_ALL else bucket_ceil(self.after + 1)
        if self.after != _BEFORE_ALL:
            self.covered = self.after

    def _builder(self, first: int, last: int) -> RollupBuilder | None:
        """The rollup builder that events from ``first`` to ``last`` go to (those from where
        it starts), if any yet."""
        rolling = self.rolling
        if rolling is None:
            start = self.roll_from
            if start is None:
                start = bucket_floor(first)
            elif last < start:
                return None
            rolling = self.rolling = RollupBuilder(self.space, start)
        return rolling

    def take(self, head: Head) -> None:
        """Snapshot the state as it is."""
        state = self.folder.state()
        self.sink.append(Snapshot(self.space.id, self.view.fingerprint, state, head))
        self.covered = state.as_of

    def rollups(self) -> list[Rollup]:
        """The rollups made, up to what the snapshots taken cover."""
        if self.rolling is None or self.covered is None:
            return []
        limit = bucket_floor(self.covered + 1)
        made = self.rolling.close(max(limit, self.rolling.done))
        return [r for r in made if r.end <= limit]

    def start_from(self, snapshot: Snapshot) -> None:
        self.folder = Folder(self.space, snapshot.state)
        self.after = snapshot.as_of

    def adder(self) -> Callable[[_Row], None]:
        """``pending.append``, the same each time (the hands of every DPU through the space
        hold it)."""
        add = self.add
        if add is None:
            self.pending = []
            add = self.add = self.pending.append
        return add

    def watch(self, probes: Sequence[int], checks: Sequence[Snapshot]) -> None:
        self.probes, self.checks = probes, checks
        self._watch_next()

    def _watch_next(self) -> None:
        probes, checks = self.probes, self.checks
        self.next_watch = min(
            probes[len(self.probed)] if len(self.probed) < len(probes) else _AFTER_ALL,
            checks[self.checked].as_of if self.checked < len(checks) else _AFTER_ALL,
        )

    @property
    def state(self) -> SpaceState:
        return self.folder.state()

    def reach(self, ts: int) -> None:
        """Settle every probe and check before ``ts``: no event still to come is at or
        before them."""
        probes, checks = self.probes, self.checks
        while len(self.probed) < len(probes) and probes[len(self.probed)] < ts:
            self.probed.append(advance(self.space, self.state, probes[len(self.probed)]))
        while self.checked < len(checks) and checks[self.checked].as_of < ts:
            self._check(checks[self.checked])
            self.checked += 1
        self._watch_next()

    def _check(self, snapshot: Snapshot) -> None:
        folded = advance(self.space, self.state, snapshot.as_of)
        stored = snapshot.state
        if (folded.count, folded.entrances, folded.exits) != (
            stored.count,
            stored.entrances,
            stored.exits,
        ):
            if self.mismatches is None:
                self.mismatches = []
            self.mismatches.append(Mismatch(self.space.id, snapshot.as_of, stored, folded))

    def before(self, ts: int, head: Head) -> bool:
        """Get ready to fold an event at ``ts``; False if it is already folded in."""
        if ts <= self.after:
            return False
        if ts > self.next_watch:
            self.reach(ts)
        cadence = self.cadence
        if cadence is not None:
            if cadence.snapshot_before(self.folder.as_of, ts):
                self.take(head)
            cadence.folded()
        self.events += 1
        return True

    def delta(self, ts: int, dpu_id: str, seq: int | None, delta: Direction, head: Head) -> None:
        """Fold a traversal's delta: :meth:`before` and the fold in one call (the replay's
        inner loop)."""
        if ts <= self.after:
            return
        if ts > self.next_watch:
            self.reach(ts)
        cadence = self.cadence
        if cadence is not None:
            if cadence.due and cadence.snapshot_before(self.folder.as_of, ts):
                self.take(head)
            cadence.folded()
        self.events += 1
        self.folder.delta(ts, delta)
        if self.roll_from != _AFTER_ALL and (rolling := self._builder(ts, ts)) is not None:
            rolling.delta(ts, delta)
        if ts > self.recent_after:
            self.recent.append(Delta(ts, dpu_id, _known(seq), delta))

    def fold_pending(self, head: Head) -> None:
        """Fold :attr:`pending` (this space's traversals of a batch, each row's direction the
        delta to this space) and empty it: :meth:`delta` for each row, in one loop with the
        fold's state in locals (the replay's inner loop)."""
        rows = self.pending
        if not rows:
            return
        try:
            if self.space.daily_reset is not None:  # the daily reset needs Folder's own path
                for dpu_id, seq, ts, delta in rows:
                    self.delta(ts, dpu_id, seq, 1 if delta > 0 else -1, head)
            else:
                self._fold_rows(rows, head)
        finally:
            rows.clear()  # in place: the routes of the pass append to this list

    def _fold_rows(self, rows: list[_Row], head: Head) -> None:
        """Fold a space's traversals of a batch (in time order, as the scan reads them) run by
        run: a run ends where a snapshot falls due, at the next probe or check, and where the
        events kept as they are folded begin. Within a run the fold is the rule's in bulk
        (:func:`_fold_run`); the events of the millisecond of a due snapshot, and the kept
        ones, go one by one."""
        i, n = 0, len(rows)
        if rows[0][2] <= self.after:  # already in the state the pass started from
            i = bisect_right(rows, self.after, key=_row_ts)
        cadence = self.cadence
        folder = self.folder
        while i < n:
            ts = rows[i][2]
            if ts > self.next_watch:  # a probe or check falls before this row: settle it
                self.reach(ts)
            if cadence is None:
                j = n
            elif cadence.due:  # row by row until the time moves on past the due point
                if cadence.snapshot_before(folder.as_of, ts):
                    self.take(head)
                j = i + 1
            else:
                j = min(n, i + cadence.every - cadence.count % cadence.every)
            if rows[j - 1][2] > self.next_watch:
                j = bisect_right(rows, self.next_watch, i, j, key=_row_ts)
            if ts > self.recent_after:  # kept as they are folded (recovery's)
                for dpu_id, seq, at, delta in rows[i:j]:
                    folder.delta(at, delta)
                    self.recent.append(Delta(at, dpu_id, _known(seq), 1 if delta > 0 else -1))
            else:
                if rows[j - 1][2] > self.recent_after:
                    j = bisect_right(rows, self.recent_after, i, j, key=_row_ts)
                _fold_run(folder, rows, i, j)
                if (
                    self.roll_from != _AFTER_ALL
                    and (rolling := self._builder(ts, rows[j - 1][2])) is not None
                ):
                    first = max(i, bisect_left(rows, rolling.done, i, j, key=_row_ts))
                    if first < j and rolling.sparse(j - first, rows[first][2], rows[j - 1][2]):
                        rolling.skip_past(rows[j - 1][2])
                    else:
                        rolling.traversals(rows, first, j)
            self.events += j - i
            if cadence is not None:
                cadence.count += j - i
                if cadence.count % cadence.every == 0:
                    cadence.due = True
            i = j

    def finish(self, head: Head) -> None:
        self.reach(_AFTER_ALL)
        if self.cadence is not None and self.cadence.snapshot_at_end(self.folder.as_of):
            self.take(head)


class _Writer:
    """Writes a pass's snapshots in the background, one batch at a time, while the pass goes
    on folding (a write mostly waits for the disk); a pass with a batch to hand over while the
    previous one is still being written waits for it, so at most two batches are held."""

    def __init__(
        self, store: EventStore, tracks: dict[str, _Track], generation: int | None
    ) -> None:
        self.store = store
        self.tracks = tracks
        self.generation = generation
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        task = self.task
        if task is None:
            return
        if exc[0] is not None:  # the pass failed: its snapshots are not wanted
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        else:
            await task

    async def write(self, sink: list[Snapshot]) -> None:
        """Hand over the snapshots in ``sink`` (emptied) to be written."""
        if self.task is not None:
            await self.task  # a failed write fails the pass here
        written = list(sink)
        sink.clear()
        self.task = asyncio.create_task(self._write(written), name="replay-snapshots")

    async def _write(self, written: list[Snapshot]) -> None:
        if self.generation is None or not written:
            return
        await self.store.replays.add_snapshots(self.generation, written)
        for snapshot in written:
            self.tracks[snapshot.space_id].written += 1


class Replay:
    """Folds the log under ``topology`` for ``space_ids`` (every space when ``None``)."""

    def __init__(
        self,
        store: EventStore,
        topology: Topology,
        *,
        space_ids: Iterable[str] | None = None,
        snapshot_every: int = DEFAULT_SNAPSHOT_EVERY,
        snapshot_lag_ms: int = DEFAULT_SNAPSHOT_LAG_MS,
        progress: Progress | None = None,
        scan_on_loop: bool = False,
    ) -> None:
        """``scan_on_loop``: read the log on the event loop's thread (SQLite), holding the loop
        while SQLite sorts and reads each batch: about 8% faster, for a command with nothing
        else on its loop (``headcount replay``), never a service."""
        self.store = store
        self.topology = topology
        ids = list(topology.spaces) if space_ids is None else list(dict.fromkeys(space_ids))
        for space_id in ids:
            topology.space(space_id)  # UnknownSpaceError names it
        self.space_ids = ids
        self.snapshot_every = snapshot_every
        self.snapshot_lag_ms = snapshot_lag_ms
        self.progress = progress
        self.scan_on_loop = scan_on_loop

    async def run(self, *, from_ts: int | None = None, digest: str = "") -> ReplaySummary:
        """Fold and write every space's snapshots as a new generation, then mark each space
        finished, which supersedes its older snapshots from where this fold began. With
        ``from_ts``, each space starts from its newest usable snapshot before that time (under
        this topology), when it has one. The caller must hold the store's lease exclusively.
        """
        started = time.monotonic()
        head = await self.store.log.head()
        horizon = now_ms() - self.snapshot_lag_ms
        tracks = self._tracks(lambda: Cadence(self.snapshot_every, horizon))
        if from_ts is not None:
            history = History(self.store, self.topology)
            for track in tracks.values():
                base = await history.usable_snapshot(track.view, at_or_before=from_ts - 1)
                if base is not None:
                    track.start_from(base)
        for track in tracks.values():
            track.roll()
        generation = await self.store.replays.begin(digest, from_ts=from_ts, head=head)
        rows = await self._pass(tracks, head, generation=generation)
        # The snapshots taken since the last write go with the rollups and the end, in one
        # commit (the pass leaves them in the sink).
        last = list(next(iter(tracks.values())).sink) if tracks else []
        for snapshot in last:
            tracks[snapshot.space_id].written += 1
        await self.store.replays.finish(
            generation,
            [
                ReplayedSpace(
                    t.space.id, None if t.after == _BEFORE_ALL else t.after + 1, t.events, t.written
                )
                for t in tracks.values()
            ],
            head=head,
            written=last,
            rollups=[(t.view.space_id, t.view.fingerprint, t.rollups()) for t in tracks.values()],
        )
        return self._summary(tracks, rows, started, generation)

    async def verify(self) -> tuple[ReplaySummary, list[Mismatch], dict[str, SpaceState]]:
        """Fold from scratch and compare every stored snapshot that an answer could come
        from (under this topology, not superseded, not made unusable by a late event). Returns
        the summary, the mismatches and each space's folded state at the end of the log."""
        started = time.monotonic()
        head = await self.store.log.head()
        tracks = self._tracks(lambda: None)
        await self._start_at_boundary(tracks)
        for track in tracks.values():
            usable = await self.store.snapshots.usable(
                track.view.space_id, track.view.fingerprint, track.view.sources, head=head
            )
            track.watch((), [s for s in usable if s.as_of > track.after])
        rows = await self._pass(tracks, head, generation=None)
        mismatches = [m for t in tracks.values() for m in t.mismatches or ()]
        states = {space_id: t.state for space_id, t in tracks.items()}
        return self._summary(tracks, rows, started, None), mismatches, states

    async def states_at(
        self, times: Sequence[int]
    ) -> tuple[ReplaySummary, dict[str, list[SpaceState]]]:
        """Each space's state at each of ``times`` (ascending), folded from scratch without
        writing anything."""
        if list(times) != sorted(times):
            raise ValueError("times must be in ascending order")
        started = time.monotonic()
        head = await self.store.log.head()
        tracks = self._tracks(lambda: None)
        for track in tracks.values():
            track.watch(tuple(times), ())
        rows = await self._pass(tracks, head, generation=None)
        return self._summary(tracks, rows, started, None), {
            space_id: t.probed for space_id, t in tracks.items()
        }

    async def recover_at(
        self, checkpoints: Mapping[str, int]
    ) -> tuple[ReplaySummary, dict[str, tuple[SpaceState, list[SpaceEvent]]]]:
        """For each space, its state at its checkpoint and every event after it, in fold
        order, folded from scratch without writing anything: what a service's actors start
        from (see ``ActorSystem.recover``)."""
        started = time.monotonic()
        head = await self.store.log.head()
        tracks = self._tracks(lambda: None)
        await self._start_at_boundary(tracks)
        for space_id, track in tracks.items():
            track.watch((checkpoints[space_id],), ())
            track.recent_after = checkpoints[space_id]
        rows = await self._pass(tracks, head, generation=None)
        found = {space_id: (t.probed[0], t.recent) for space_id, t in tracks.items()}
        return self._summary(tracks, rows, started, None), found

    async def _start_at_boundary(self, tracks: dict[str, _Track]) -> None:
        """After ``partitions detach`` the log holds nothing before its boundary: each space
        starts from the snapshot the detach wrote at the boundary, not from an empty state.
        A space without one under this topology is folded from what the log holds, and
        said to miss the detached events."""
        boundary = await self.store.log.closed_before()
        if boundary is None:
            return
        fingerprints = {space_id: t.view.fingerprint for space_id, t in tracks.items()}
        found = await self.store.snapshots.taken_at(boundary - 1, fingerprints)
        for space_id, snapshot in found.items():
            tracks[space_id].start_from(snapshot)
        missing = [space_id for space_id in tracks if space_id not in found]
        if missing:
            log.warning(
                "%d space(s) (%s first) have no snapshot under this topology where the log was"
                " closed (%s): folded from what the log holds, they miss the events of the"
                " detached months; attach those months again and replay to fold them",
                len(missing),
                missing[0],
                format_ms(boundary),
            )

    def _tracks(self, cadence: Callable[[], Cadence | None]) -> dict[str, _Track]:
        sink: list[Snapshot] = []
        return {
            space_id: _Track(
                self.topology.space(space_id),
                SpaceView.of(self.topology, space_id),
                cadence(),
                sink,
            )
            for space_id in self.space_ids
        }

    async def _pass(self, tracks: dict[str, _Track], head: Head, *, generation: int | None) -> int:
        """Stream the log once up to ``head`` and fold it into ``tracks``; writes snapshots
        in batches as they come when ``generation`` is given, and leaves those taken since
        the last batch in the tracks' sink (:meth:`run` commits them with the end of the
        replay). Returns how many rows were read."""
        oldest = min((t.after for t in tracks.values()), default=_BEFORE_ALL)
        after = None if oldest == _BEFORE_ALL else oldest
        dpus = self._dpus(tracks)
        found = self._resets(await self.store.log.resets_up_to(head, after=after), tracks)
        # Only the events kept as they are folded (recovery's, after each checkpoint) need
        # their seq.
        seq_after = min((t.recent_after for t in tracks.values()), default=_AFTER_ALL)
        rows = self.store.log.scan_log(
            dpu_ids=dpus, after=after, head=head, seq_after=seq_after, on_loop=self.scan_on_loop
        )
        progress = self.progress
        with bulk_pass():
            async with _Writer(self.store, tracks, generation) as writer:
                read = await self._stream(
                    tracks, head, found, rows, writer if generation is not None else None
                )
        if progress is not None:
            progress.finish(read)
        return read

    async def _stream(
        self,
        tracks: dict[str, _Track],
        head: Head,
        found: list[StoredReset],
        rows: AsyncIterator[Sequence[_Row]],
        writer: _Writer | None,
    ) -> int:
        routes = _Router(self.topology, tracks)
        hands = _Hands()
        read = 0
        progress = self.progress
        sink = next(iter(tracks.values())).sink if tracks else []
        resets_left = iter([*(r.ts for r in found), _AFTER_ALL])
        next_reset = next(resets_left)
        every = list(tracks.values())
        async for batch in interleave_resets(found, rows, _row_ts, reset_ts):
            last = batch[-1]
            if next_reset <= (last.ts if isinstance(last, StoredReset) else last[2]):
                # Resets fall in this batch (merged in by time): fold it event by event.
                for item in batch:
                    if isinstance(item, StoredReset):
                        self._reset(tracks, item, head)
                        next_reset = next(resets_left)
                        read -= 1  # counted with its batch, but not a row of the traversal log
                    else:
                        self._fold_event(item, routes, head)
            elif len(batch) < len(every) * _ROWS_PER_SPACE:
                # Too few rows a space for a loop per space to pay.
                self._fold_events(batch, routes, head)  # type: ignore[arg-type]
            else:
                self._fold_batch(batch, routes, every, head, hands)  # type: ignore[arg-type]
            read += len(batch)
            if progress is not None:
                progress.update(read)
            if writer is not None and len(sink) >= _FLUSH_EVERY:
                await writer.write(sink)
        for track in tracks.values():
            track.finish(head)
        return read

    def _fold_batch(
        self,
        batch: Sequence[_Row],
        routes: _Router,
        every: list[_Track],
        head: Head,
        hands: _Hands,
    ) -> None:
        """Fold a batch of traversals without resets: each row handed to the batches of the
        spaces it reaches (by its DPU's hand, :class:`_Hands`), then each space's batch folded
        in one loop."""
        first, last = batch[0][2], batch[-1][2]
        if not hands.start <= first <= last < hands.end:
            hands.clear()
        by_dpu = hands.by_dpu
        route_of = routes.of

        def unseen(row: _Row) -> None:
            """A row of a DPU without a hand for this batch: routed as it is, and the DPU
            given a hand if its route holds over the whole batch."""
            route = route_of(row[0], row[2])
            if route[0] <= first and last < route[1]:
                hand = hands.give(route[3], route)
            else:  # the DPU moves within the batch: routed row by row
                hand = _hand(route)
            hand(row)

        get = by_dpu.get
        for row in batch:
            get(row[0], unseen)(row)
        for track in every:
            if track.pending:
                track.fold_pending(head)

    def _fold_events(self, batch: Sequence[_Row], routes: _Router, head: Head) -> None:
        """Fold a batch of traversals event by event (:meth:`_fold_event` for each, inline)."""
        get = routes.by_dpu.get
        route_of = routes.of
        for dpu_id, seq, ts, direction in batch:
            route = get(dpu_id)
            if route is None or not route[0] <= ts < route[1]:
                route = route_of(dpu_id, ts)
            for track, deltas in route[2]:
                track.delta(ts, route[3], seq, deltas[direction], head)

    def _fold_event(self, row: _Row, routes: _Router, head: Head) -> None:
        """Fold one traversal into the spaces it reaches."""
        dpu_id, seq, ts, direction = row
        route = routes.of(dpu_id, ts)
        for track, deltas in route[2]:
            track.delta(ts, route[3], seq, deltas[direction], head)

    def _dpus(self, tracks: dict[str, _Track]) -> frozenset[str] | None:
        """The DPUs to read: those that reach the tracked spaces when they are few enough to
        name in the query, else ``None`` (every row is read; routing skips the others)."""
        if len(tracks) == len(self.topology.spaces):
            return None
        dpus = frozenset(s.dpu_id for t in tracks.values() for s in t.view.sources)
        return dpus if len(dpus) <= _SQL_DPU_FILTER else None

    @staticmethod
    def _resets(found: Sequence[StoredReset], tracks: Collection[str]) -> list[StoredReset]:
        """The resets of tracked spaces, in time order."""
        return [r for r in found if r.space_id in tracks]

    @staticmethod
    def _reset(tracks: dict[str, _Track], reset: StoredReset, head: Head) -> None:
        track = tracks[reset.space_id]
        if track.before(reset.ts, head):
            track.folder.reset(reset.ts, reset.count)
            if (
                track.roll_from != _AFTER_ALL
                and (rolling := track._builder(reset.ts, reset.ts)) is not None
            ):
                rolling.reset(reset.ts, reset.count)
            if reset.ts > track.recent_after:
                track.recent.append(Reset(reset.space_id, reset.ts, reset.count, reset.source))

    def _summary(
        self, tracks: dict[str, _Track], rows: int, started: float, generation: int | None
    ) -> ReplaySummary:
        return ReplaySummary(
            spaces=len(tracks),
            rows=rows,
            events=sum(t.events for t in tracks.values()),
            snapshots=sum(t.written for t in tracks.values()),
            seconds=time.monotonic() - started,
            generation=generation,
        )
