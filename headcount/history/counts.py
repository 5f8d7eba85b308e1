"""Exact answers for any moment: the newest usable snapshot at or before it, plus the log."""

from __future__ import annotations

import logging
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from operator import itemgetter

from sqlalchemy.ext.asyncio import AsyncConnection

from headcount.clock import now_ms
from headcount.domain.fold import EMPTY, Folder, SpaceState, advance
from headcount.domain.rollups import RollupBuilder, bucket_ceil, bucket_floor
from headcount.domain.topology import Space, Topology
from headcount.eventstore.answers import RESET, SnapshotTail
from headcount.eventstore.records import RolledUp, Snapshot
from headcount.eventstore.store import EventStore
from headcount.history.events import SpaceView

log = logging.getLogger(__name__)

_DAY_MS = 86_400_000
_BEFORE_ALL = -(2**62)
_ts = itemgetter(1)

#: Snapshot a space every this many folded events. Chosen by measurement (bench/history.py,
#: BENCHMARKS.md): at 1M events, p50 6 ms at 100 against 11 ms at 1,000 and 68 ms at 10,000,
#: for one snapshot row per 100 events (1% more rows).
DEFAULT_SNAPSHOT_EVERY = 100
#: Snapshots stay this far behind the newest event of their space, so that reports arriving a
#: little out of order (the normal case with many DPUs) never land before a snapshot.
DEFAULT_SNAPSHOT_LAG_MS = 5 * 60 * 1000


@dataclass(frozen=True, slots=True)
class SpaceCount:
    """A space's count at ``ts`` with the rest of its folded state. ``snapshot`` is the time of
    the snapshot the answer was folded from (``None``: from the start of the log) and ``folded``
    how many events were folded on top of it."""

    space_id: str
    ts: int
    state: SpaceState
    snapshot: int | None = None
    folded: int = 0

    @property
    def count(self) -> int:
        return self.state.count


class Cadence:
    """When to snapshot while folding one space: every ``every`` events, at the first event
    that moves the time on (a snapshot stands only where every event of its millisecond is
    folded), and never past ``horizon``. Call :meth:`snapshot_before` before folding each
    event, :meth:`folded` after, and :meth:`snapshot_at_end` when the events run out."""

    __slots__ = ("count", "due", "every", "horizon")

    def __init__(self, every: int, horizon: int) -> None:
        self.every = every
        self.horizon = horizon
        self.count = 0
        self.due = False

    def snapshot_before(self, as_of: int | None, ts: int) -> bool:
        """Whether to snapshot the state as of ``as_of`` before folding an event at ``ts``."""
        if self.due and ts != as_of and as_of is not None and as_of <= self.horizon:
            self.due = False
            return True
        return False

    def folded(self) -> None:
        self.count += 1
        if self.count % self.every == 0:
            self.due = True

    def snapshot_at_end(self, as_of: int | None) -> bool:
        return self.due and as_of is not None and as_of <= self.horizon

    def fold(
        self, folder: Folder, rows: Sequence[Sequence[int]], take: Callable[[SpaceState], None]
    ) -> None:
        """Fold rows ``(kind, ts, value)`` (see ``Folder.fold_rows``) into ``folder``, giving
        ``take`` the state wherever a snapshot is due: what :meth:`snapshot_before`, the fold
        and :meth:`folded` for each row do, with the rows between two due points folded in one
        call."""
        i, n = 0, len(rows)
        while i < n:
            if self.due:  # row by row until the time moves on past the due point
                if self.snapshot_before(folder.as_of, rows[i][1]):
                    take(folder.state())
                j = i + 1
            else:
                j = min(n, i + self.every - self.count % self.every)
            folder.fold_rows(rows[i:j], RESET)
            self.count += j - i
            if self.count % self.every == 0:
                self.due = True
            i = j


class History:
    """Answers ``count(space, ts)`` from snapshots and the event log, and keeps snapshots."""

    def __init__(
        self,
        store: EventStore,
        topology: Topology,
        *,
        snapshot_every: int = DEFAULT_SNAPSHOT_EVERY,
        snapshot_lag_ms: int = DEFAULT_SNAPSHOT_LAG_MS,
    ) -> None:
        if snapshot_every < 1:
            raise ValueError("snapshot_every must be at least 1")
        self.store = store
        self.topology = topology
        self.snapshot_every = snapshot_every
        self.snapshot_lag_ms = snapshot_lag_ms
        self._noted: set[str] = set()

    async def count_at(self, space_id: str, ts: int) -> SpaceCount:
        """The fold of every event touching the space with ``ts`` at or before ``ts``."""
        space = self.topology.space(space_id)
        view = SpaceView.of(self.topology, space_id)
        quick = await self.store.answers.snapshot_tail(
            space_id, view.fingerprint, view.sources, until=ts
        )
        if quick is not None:
            return _folded_tail(space, quick, ts)
        streamed = await self._count_streamed(space, view, ts)
        if streamed is not None:
            return streamed
        async with self.store.log.reading() as within:  # one connection for the whole answer
            base = await self.usable_snapshot(view, at_or_before=ts, within=within)
            # Folded in place: this path answers long tails (a late event makes the day's
            # snapshots after it unusable), where a state object per event costs a third.
            folder = Folder(space, EMPTY if base is None else base.state)
            folded = 0
            async for rows in self.store.log.space_rows(
                space_id, view.sources, after=folder.as_of, until=ts, within=within
            ):
                folded += folder.fold_rows(rows, RESET)
        folder.advance(ts)
        snapshot = None if base is None else base.as_of
        return SpaceCount(space_id, ts, folder.state(), snapshot, folded)

    async def _count_streamed(self, space: Space, view: SpaceView, ts: int) -> SpaceCount | None:
        """The answer when the one-statement path declines because the newest snapshot may not
        be used or the tail is long (both, for a day, after a late event): the newest usable
        snapshot by the general rule, then it and the events after it in one statement
        streamed in batches (``answers.snapshot_window``), folded in place. ``None``: no
        usable snapshot, or the statement does not find the same one (the general path
        answers)."""
        base = await self.usable_snapshot(view, at_or_before=ts)
        if base is None:
            return None
        async with self.store.answers.snapshot_window(
            space.id, view.fingerprint, view.sources, before=base.as_of + 1, end=ts + 1
        ) as window:
            if window is None or window.state != base.state:
                return None
            folder = Folder(space, window.state)
            folded = 0
            async for batch in window.batches:
                folded += folder.fold_rows(batch, RESET)
        folder.advance(ts)
        return SpaceCount(space.id, ts, folder.state(), base.as_of, folded)

    async def usable_snapshot(
        self, view: SpaceView, *, at_or_before: int, within: AsyncConnection | None = None
    ) -> Snapshot | None:
        """The newest snapshot of the space at or before a time that may be used (see
        ``eventstore.snapshots``). ``within``: a transaction of ``EventLog.reading`` to read
        in."""
        found = await self.store.snapshots.newest_usable(
            view.space_id, view.fingerprint, view.sources, at_or_before=at_or_before, within=within
        )
        if found is None:
            await self._note_other_topologies(view)
        return found

    async def _note_other_topologies(self, view: SpaceView) -> None:
        """Say once per space when its snapshots were all folded under another topology, so
        answers come from the whole log until a replay writes snapshots for this one."""
        if view.space_id in self._noted:
            return
        self._noted.add(view.space_id)
        if await self.store.snapshots.under_other_topologies(view.space_id, view.fingerprint):
            log.warning(
                "space %s: its snapshots were folded under another topology and are not used;"
                " answering from the log. Run 'headcount replay' to write snapshots for the"
                " current topology",
                view.space_id,
            )

    async def refresh_snapshots(
        self,
        space_ids: Iterable[str] | None = None,
        *,
        now: int | None = None,
        on_space: Callable[[str, int], None] | None = None,
    ) -> int:
        """Fold each space forward from its newest usable snapshot and append a snapshot every
        ``snapshot_every`` events, up to ``snapshot_lag_ms`` before its newest event. Returns
        how many snapshots were written. ``on_space(space_id, written)`` reports progress."""
        total = 0
        for space_id in self.topology.spaces if space_ids is None else space_ids:
            written = await self._refresh_space(space_id, now_ms() if now is None else now)
            total += written
            if on_space is not None:
                on_space(space_id, written)
        return total

    async def _refresh_space(self, space_id: str, now: int) -> int:
        space = self.topology.space(space_id)
        view = SpaceView.of(self.topology, space_id)
        pending: list[Snapshot] = []
        # Every read in one transaction (on SQLite, one view of the store; PostgreSQL reads
        # the head under the log's lock in its own): a refresh runs every snapshot_every
        # events of a space, and each transaction is round trips to the driver.
        async with self.store.log.reading() as conn:
            newest = await self.store.log.newest_ts((s.dpu_id for s in view.sources), within=conn)
            if newest is None:
                return 0
            horizon = min(newest, now) - self.snapshot_lag_ms
            head = await self.store.log.head(within=conn)
            base = await self.usable_snapshot(view, at_or_before=horizon, within=conn)
            folder = Folder(space, EMPTY if base is None else base.state)

            def take(state: SpaceState) -> None:
                pending.append(Snapshot(space_id, view.fingerprint, state, head))

            cadence = Cadence(self.snapshot_every, horizon)
            after = folder.as_of
            # The rollups go on from where the space's rollups end (their bucket may hold
            # events the snapshot folded already), or start at the first bucket after the
            # snapshot.
            start = await self._rollups_start(view, after, conn)
            rolling = None if start is None else RollupBuilder(space, start)
            read_after = after if start is None or after is None else min(after, start - 1)
            async for rows in self.store.log.space_rows(
                space_id, view.sources, after=read_after, until=horizon, head=head, within=conn
            ):
                if rolling is None:  # nothing folded before: the first event's bucket
                    rolling = RollupBuilder(space, bucket_floor(rows[0][1]))
                _roll(rolling, rows[bisect_left(rows, rolling.done, key=_ts) :])
                if after is not None and rows[0][1] <= after:
                    rows = rows[bisect_right(rows, after, key=_ts) :]
                cadence.fold(folder, rows, take)
        if cadence.snapshot_at_end(folder.as_of):
            take(folder.state())
        made = None
        covered = max([s.as_of for s in pending] + ([] if after is None else [after]), default=None)
        if rolling is not None and covered is not None:
            # Only buckets the stored snapshots cover: a later event in them is marked late.
            limit = bucket_floor(min(horizon, covered) + 1)
            rollups = [r for r in rolling.close(max(limit, rolling.done)) if r.end <= limit]
            made = RolledUp(
                space_id, view.fingerprint, head, _BEFORE_ALL if after is None else after, rollups
            )
        stored = await self.store.snapshots.add(pending, view.sources, made=made)
        if len(stored) < len(pending):
            log.info(
                "space %s: %d of %d snapshots skipped, events arrived while folding",
                space_id,
                len(pending) - len(stored),
                len(pending),
            )
        return len(stored)

    async def _rollups_start(
        self, view: SpaceView, after: int | None, within: AsyncConnection
    ) -> int | None:
        """Where a refresh that folds from ``after`` starts the space's rollups: where they
        end, unless that is over a day before ``after`` (that stretch is left to the log);
        without any, the first bucket after ``after`` (``None``: the first event's)."""
        end = await self.store.snapshots.rollups_end(view.space_id, view.fingerprint, within=within)
        if end is not None and (after is None or end > after - _DAY_MS):
            return end
        return None if after is None else bucket_ceil(after + 1)


def _roll(rolling: RollupBuilder, rows: Sequence[Sequence[int]]) -> None:
    """Give the rollups a refresh's rows ``(kind, ts, value)``, as many at a time as a replay
    would (``snapshot_every`` by default): a run too quiet to be worth rolling up is skipped
    (``RollupBuilder.sparse``) and left to the log."""
    for start in range(0, len(rows), DEFAULT_SNAPSHOT_EVERY):
        run = rows[start : start + DEFAULT_SNAPSHOT_EVERY]
        run = run[bisect_left(run, rolling.done, key=_ts) :]  # after a skip: past its bucket
        if not run:
            continue
        if rolling.sparse(len(run), run[0][1], run[-1][1]):
            rolling.skip_past(run[-1][1])
        else:
            rolling.rows(run, RESET)


def _folded_tail(space: Space, tail: SnapshotTail, ts: int) -> SpaceCount:
    """The answer from a snapshot and the events after it (``EventStore.answers``), folded
    in place."""
    folder = Folder(space, tail.state)
    folded = folder.fold_rows(tail.rows, RESET)
    state = advance(space, folder.state(), ts)
    return SpaceCount(space.id, ts, state, tail.state.as_of, folded)
