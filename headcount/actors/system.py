"""The actor system: one actor per space, a router in front, a supervisor around them, and a
snapshot writer behind them."""

from __future__ import annotations

import asyncio
import datetime
import heapq
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Self

from headcount.actors.changes import Cause, ChangeFeed
from headcount.actors.live import DeltaRow
from headcount.actors.reading import Readiness, SpaceRecoveringError
from headcount.actors.space import DEFAULT_WINDOW_MS, SpaceActor
from headcount.clock import now_ms
from headcount.domain.events import TRAVERSAL_RANK, Reset, Traversal, space_delta
from headcount.domain.fold import SpaceState, daily_reset_window
from headcount.domain.topology import Link, Space
from headcount.errors import HeadcountError, StoreDataError, StoreError, UnknownSpaceError
from headcount.eventstore.records import StoredReset
from headcount.history import History
from headcount.history.replay import Replay

log = logging.getLogger(__name__)


class SupervisorError(HeadcountError):
    """An actor kept crashing past its restart budget; the service stops rather than serve
    counts that no longer follow the log."""


class RestartBudget:
    """At most ``max_restarts`` within ``over_s`` seconds."""

    def __init__(self, max_restarts: int = 5, over_s: float = 60.0) -> None:
        self.max_restarts = max_restarts
        self.over_s = over_s
        self._times: deque[float] = deque()

    def spend(self) -> bool:
        """Record a restart; False when the budget is exhausted."""
        now = time.monotonic()
        while self._times and now - self._times[0] > self.over_s:
            self._times.popleft()
        self._times.append(now)
        return len(self._times) <= self.max_restarts


#: Measured costs of recovery (SQLite, this project's machine): about 4 ms per space when each
#: is recovered from its snapshot and log, about 2 us per event in one pass over the log.
_PER_SPACE_COST_S = 4e-3
_PER_EVENT_COST_S = 2e-6

#: The least time between two snapshot refreshes of one space. A refresh costs a few
#: milliseconds whatever it folds (a transaction of some thirty statements): asked for after
#: every ``snapshot_every`` events, refreshes took a third of the service's time under a flood
#: of single-event messages (bench/ingest.py --mode single), and once a second for each of a
#: hundred busy spaces still a fifth (bench/live_push.py). Snapshots are still written every
#: ``snapshot_every`` events (a later refresh writes each one it passed), and none is within
#: ``snapshot_lag_ms`` (5 minutes) of a space's newest event anyway: a few seconds more
#: before one is written changes no answer, and little of what a restart folds.
DEFAULT_SNAPSHOT_INTERVAL_S = 5.0


class ActorSystem:
    """Runs a :class:`SpaceActor` for every space in ``space_ids`` (default: the topology's).

    :meth:`recover` then :meth:`run` (or :meth:`running` for both, with a clean stop).
    """

    def __init__(
        self,
        history: History,
        *,
        space_ids: Iterable[str] | None = None,
        window_ms: int = DEFAULT_WINDOW_MS,
        mailbox_size: int = 10_000,
        budget: Callable[[], RestartBudget] = RestartBudget,
        drain_timeout_s: float = 10.0,
        recover_concurrency: int = 8,
        on_late: Callable[[], None] | None = None,
        clock: Callable[[], int] = now_ms,
        daily_reset_tick_s: float = 1.0,
        snapshot_interval_s: float = DEFAULT_SNAPSHOT_INTERVAL_S,
    ) -> None:
        self.history = history
        #: Every change of a space's live state, for whoever subscribes.
        self.changes = ChangeFeed()
        self._clock = clock
        self._daily_reset_tick_s = daily_reset_tick_s
        self.topology = history.topology
        ids = list(self.topology.spaces if space_ids is None else space_ids)
        for space_id in ids:
            self.topology.space(space_id)  # unknown ids fail here, not later
        applied = self._applied  # one bound method for all, not one each
        self.actors: dict[str, SpaceActor] = {
            space_id: SpaceActor(
                space_id,
                history,
                mailbox_size=mailbox_size,
                window_ms=window_ms,
                on_applied=applied,
                on_late=on_late,
                clock=clock,
                changes=self.changes,
            )
            for space_id in ids
        }
        self._budget = budget
        self._drain_timeout_s = drain_timeout_s
        self._recover_concurrency = recover_concurrency
        self._since_snapshot: dict[str, int] = dict.fromkeys(ids, 0)
        self._due: asyncio.Queue[str] = asyncio.Queue()
        self._queued: set[str] = set()
        self._snapshot_interval_s = snapshot_interval_s
        #: When each space's last refresh started (event loop time), for spaces refreshed
        #: within the last interval; and the refreshes waiting for their interval to pass.
        self._refreshed: dict[str, float] = {}
        self._waiting: dict[str, asyncio.TimerHandle] = {}
        self.restarts = 0
        self.task: asyncio.Task[None] | None = None
        self._group: asyncio.TaskGroup | None = None
        self._awake: set[str] = set()

    # -- lifecycle -------------------------------------------------------------------------

    async def recover(self) -> None:
        """Rebuild every actor's state from the store. Space by space (snapshot + log, a few
        at a time) costs some queries per space; one pass over the whole log costs a few
        microseconds per event. Whichever should be cheaper is used."""
        started = time.monotonic()
        store = self.history.store
        events = (await store.log.head()).position  # an upper bound, without counting
        if len(self.actors) * _PER_SPACE_COST_S > events * _PER_EVENT_COST_S:
            await self._recover_in_one_pass()
            how = f"in one pass over {events:,} events"
        else:
            limit = asyncio.Semaphore(self._recover_concurrency)
            closed = await store.log.closed_before()

            async def recover(actor: SpaceActor) -> None:
                async with limit:
                    await actor.recover(closed)

            async with asyncio.TaskGroup() as group:
                for actor in self.actors.values():
                    group.create_task(recover(actor), name=f"recover:{actor.space_id}")
            how = "space by space"
        log.info(
            "recovered %d spaces %s in %.2fs", len(self.actors), how, time.monotonic() - started
        )

    async def _recover_in_one_pass(self) -> None:
        newest = await self.history.store.log.newest_ts_by_dpu()
        closed = await self.history.store.log.closed_before()
        checkpoints = {}
        for space_id, actor in self.actors.items():
            times = [
                newest[s.dpu_id] for s in self.topology.sources(space_id) if s.dpu_id in newest
            ]
            checkpoints[space_id] = actor.checkpoint_for(max(times, default=None), closed)
        replay = Replay(self.history.store, self.topology, space_ids=self.actors)
        _, found = await replay.recover_at(checkpoints)
        for space_id, (settled, recent) in found.items():
            self.actors[space_id].restore(settled, checkpoints[space_id], recent)

    async def run(self) -> None:
        """Run the snapshot writer and, from its first event on, each actor (supervised),
        until cancelled. Raises :class:`SupervisorError` when an actor exhausts its restart
        budget."""
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                group.create_task(self._snapshots(), name="snapshots")
                group.create_task(self._daily_resets(), name="daily-resets")
                for actor in self.actors.values():
                    if actor.has_mailbox:  # sent to before the system ran
                        self._wake(actor)
        except* SupervisorError as failed:
            raise failed.exceptions[0] from None
        finally:
            self._group = None
            self._awake.clear()
            for space_id, waiting in self._waiting.items():
                waiting.cancel()
                self._queued.discard(space_id)  # its events are in write_snapshots' count
            self._waiting.clear()

    def _wake(self, actor: SpaceActor) -> None:
        """Start the actor's task when the first event comes for it. A task waiting on an empty
        mailbox costs 2 KB; a hundred thousand idle spaces need none."""
        if self._group is not None and actor.space_id not in self._awake:
            self._awake.add(actor.space_id)
            self._group.create_task(self._supervise(actor), name=f"actor:{actor.space_id}")

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Self]:
        """Recover, run in the background, and on leaving drain the mailboxes, stop, and
        write final snapshots. A supervisor failure is raised on leaving."""
        await self.recover()
        task = self.task = asyncio.create_task(self.run(), name="actors")
        try:
            yield self
        finally:
            if not task.done():
                await self.drain()
            task.cancel()
            await asyncio.wait([task])
            failure = None if task.cancelled() else task.exception()
            if failure is not None:
                raise failure
            await self.write_snapshots()

    async def drain(self) -> None:
        """Wait until every mailbox is empty (bounded by the drain timeout)."""
        waits = [a.mailbox.join() for a in self.actors.values() if a.has_mailbox]
        try:
            async with asyncio.timeout(self._drain_timeout_s):
                await asyncio.gather(*waits)
        except TimeoutError:
            left = self.mailbox_depth()
            log.warning("stopping with %d events not applied (they are in the store)", left)

    async def _supervise(self, actor: SpaceActor) -> None:
        """Run the actor; when it crashes, recover it from the store and run it again. A
        crash and a failed recovery (the store down, say) each spend the restart budget, with
        a growing pause before each retry; past the budget, :class:`SupervisorError`."""
        budget = self._budget()
        recovering = False
        pause = 0.05
        while True:
            try:
                if recovering:
                    await actor.recover()
                    recovering, pause = False, 0.05
                    self.restarts += 1
                    log.warning("actor for space %s restarted from the store", actor.space_id)
                await actor.run()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                what = "could not recover" if recovering else "crashed"
                log.exception("actor for space %s %s", actor.space_id, what)
                if not budget.spend():
                    raise SupervisorError(
                        f"the actor for space {actor.space_id!r} failed more than"
                        f" {budget.max_restarts} times in {budget.over_s:.0f}s: {e}"
                    ) from e
                recovering = True
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)

    async def _daily_resets(self) -> None:
        """Publish each space's state at its daily reset instant, event or not. Spaces that
        share a time zone and reset time share one timer; the time is the system's clock, read
        at least every ``daily_reset_tick_s`` (so a clock that jumps is followed)."""
        groups: dict[tuple[str, datetime.time], tuple[Space, list[str]]] = {}
        for space_id in self.actors:
            space = self.topology.space(space_id)
            if space.daily_reset is not None:
                key = (space.time_zone, space.daily_reset)
                groups.setdefault(key, (space, []))[1].append(space_id)
        if not groups:
            return
        members = list(groups.values())
        now = self._clock()
        due = [(daily_reset_window(space, now)[1], n) for n, (space, _) in enumerate(members)]
        heapq.heapify(due)
        while True:
            instant, n = due[0]
            now = self._clock()
            if now < instant:
                await asyncio.sleep(min((instant - now) / 1000, self._daily_reset_tick_s))
                continue
            space, space_ids = members[n]
            last, upcoming = daily_reset_window(space, now)  # a clock that jumped: once
            heapq.heapreplace(due, (upcoming, n))
            for space_id in space_ids:
                self.actors[space_id].publish_state(last, Cause.DAILY_RESET)

    # -- routing ---------------------------------------------------------------------------

    async def route(self, traversals: Sequence[Traversal]) -> int:
        """Hand stored traversals to the actors of the spaces their DPU's doorway links at
        each one's time: one hand-off per space, its deltas in fold order (so the actor folds
        them on top of its state rather than refolding). Returns how many deltas were
        delivered."""
        by_space: dict[str, list[DeltaRow]] = {}
        links_span = self.topology.links_span
        # Each DPU's links and the span of time they hold, looked up once a batch (a batch's
        # traversals of one DPU mostly fall in one span).
        spans: dict[str, tuple[tuple[Link, ...], int, int]] = {}
        for t in traversals:
            dpu_id, ts = t.dpu_id, t.ts
            span = spans.get(dpu_id)
            if span is None or not span[1] <= ts < span[2]:
                span = spans[dpu_id] = links_span(dpu_id, ts)
            for link in span[0]:
                rows = by_space.get(link.space_id)
                if rows is None:
                    rows = by_space[link.space_id] = []
                delta = space_delta(t.direction, link.sensor_placement)
                rows.append(((ts, TRAVERSAL_RANK, dpu_id, t.seq), delta))
        delivered = 0
        for space_id, rows in by_space.items():
            actor = self.actors.get(space_id)
            if actor is not None:
                rows.sort()  # fold order: by key (a key has one delta)
                self._wake(actor)
                await actor.tell_all(rows)
                delivered += len(rows)
        return delivered

    async def reset(self, reset: Reset) -> StoredReset:
        """Store a manual reset and hand it to its space's actor: the one call that a reset
        made through the service needs. A reset older than the space's newest event is a late
        event like any other. While the system runs, returns once the live count shows it
        (or after the drain timeout, with a warning: it is stored, and will)."""
        self.topology.space(reset.space_id)  # raises UnknownSpaceError
        stored = await self.history.store.log.append_reset(reset)
        event = Reset(stored.space_id, stored.ts, stored.count, stored.source)
        actor = self.actors.get(reset.space_id)
        running = self._group is not None or (self.task is not None and not self.task.done())
        if actor is None or not running or not actor.ready:
            await self.route_reset(event)  # folded when the actors run (or recover from the log)
            return stored
        self._wake(actor)
        try:
            async with asyncio.timeout(self._drain_timeout_s):
                await actor.tell_and_wait(event)
        except TimeoutError:
            log.warning(
                "space %s: the reset at %d is stored but not yet in the live count after %gs",
                reset.space_id,
                reset.ts,
                self._drain_timeout_s,
            )
        return stored

    async def route_reset(self, reset: Reset) -> None:
        """Hand a stored reset to its space's actor."""
        actor = self.actors.get(reset.space_id)
        if actor is not None:
            self._wake(actor)
            await actor.tell(reset)

    # -- queries ---------------------------------------------------------------------------

    def actor(self, space_id: str) -> SpaceActor:
        actor = self.actors.get(space_id)
        if actor is None:
            raise UnknownSpaceError(space_id)
        return actor

    def live(self, space_id: str) -> SpaceState:
        """A space's live state, from memory."""
        return self.actor(space_id).live()

    def live_state(self, space_id: str) -> SpaceState | None:
        """The space's live state now, ``None`` when no actor here serves it (see
        :class:`~headcount.actors.reading.LiveCounts`)."""
        actor = self.actors.get(space_id)
        if actor is None:
            self.topology.space(space_id)  # raises UnknownSpaceError
            return None
        if not actor.ready:
            raise SpaceRecoveringError(space_id)
        return actor.live()

    def readiness(self) -> Readiness:
        recovering = tuple(space_id for space_id, a in self.actors.items() if not a.ready)
        return Readiness(len(self.actors), recovering, self.restarts)

    def mailbox_depth(self) -> int:
        return sum(a.mailbox.qsize() for a in self.actors.values() if a.has_mailbox)

    # -- snapshots -------------------------------------------------------------------------

    def _applied(self, space_id: str, n: int) -> None:
        count = self._since_snapshot[space_id] + n
        self._since_snapshot[space_id] = count
        if count >= self.history.snapshot_every and space_id not in self._queued:
            self._queued.add(space_id)
            loop = asyncio.get_running_loop()
            last = self._refreshed.pop(space_id, None)
            if last is None or loop.time() >= last + self._snapshot_interval_s:
                self._due.put_nowait(space_id)
            else:
                self._waiting[space_id] = loop.call_at(
                    last + self._snapshot_interval_s, self._interval_passed, space_id
                )

    def _interval_passed(self, space_id: str) -> None:
        del self._waiting[space_id]
        self._due.put_nowait(space_id)

    async def _snapshots(self) -> None:
        """Write snapshots of spaces that folded enough events since their last, one space at a
        time, from the store (never from memory: the log is the truth)."""
        while True:
            space_id = await self._due.get()
            self._queued.discard(space_id)
            self._since_snapshot[space_id] = 0
            if self._snapshot_interval_s > 0:
                self._refreshed[space_id] = asyncio.get_running_loop().time()
            refresh = asyncio.ensure_future(self.history.refresh_snapshots([space_id]))
            try:
                await asyncio.shield(refresh)
            except asyncio.CancelledError:
                # Stopping: let a write under way finish rather than leave a connection
                # holding the store's write lock for the final snapshots to wait on.
                await asyncio.wait([refresh])
                raise
            except StoreDataError:
                log.exception("snapshots of space %s failed; retried after more events", space_id)
            except StoreError as e:  # down or busy: no bug to trace, the reason says it all
                log.warning(
                    "snapshots of space %s not written (%s); retried after more events",
                    space_id,
                    e,
                )
            except HeadcountError:
                log.exception("snapshots of space %s failed; retried after more events", space_id)

    async def write_snapshots(self) -> int:
        """Bring the snapshots of every space that folded events since its last snapshot
        up to date (at shutdown); the others have nothing new to snapshot, and with many
        spaces asking each would make stopping take minutes. Snapshots are disposable: a
        failure is logged, and the next start folds from the log instead."""
        folded = [space_id for space_id, n in self._since_snapshot.items() if n > 0]
        try:
            return await self.history.refresh_snapshots(folded)
        except StoreDataError:
            log.exception("final snapshots not written; the next start folds more of the log")
            return 0
        except StoreError as e:
            log.warning("final snapshots not written (%s); the next start folds more of the log", e)
            return 0
        except HeadcountError:
            log.exception("final snapshots not written; the next start folds more of the log")
            return 0
