"""One space's actor: a mailbox, the live state, recovery from the store."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from types import EllipsisType

from headcount.actors.changes import Cause, Change, ChangeFeed
from headcount.actors.live import DeltaRow, LiveSpace, Outcomes
from headcount.clock import now_ms
from headcount.domain.events import SpaceEvent
from headcount.domain.fold import SpaceState
from headcount.history import History, SpaceView, space_events

log = logging.getLogger(__name__)

#: Events newer than this behind the newest are kept in memory, so reports arriving out of order
#: within it are placed without touching the store. Matches the snapshot lag by default.
DEFAULT_WINDOW_MS = 5 * 60 * 1000
_FAR_FUTURE = 2**62
_BEFORE_ALL = -(2**62)


class Mailbox:
    """An actor's mailbox: batches of events handed in together (one hand-off per space and
    ingest batch, not per event), bounded by the events it holds. A batch waits while
    ``size`` events or more are waiting, so at most ``size`` and one batch wait."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._batches: deque[Sequence[SpaceEvent | DeltaRow]] = deque()
        self._waiting = 0
        self._unfinished = 0
        self._arrived = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._finished = asyncio.Event()
        self._finished.set()

    def qsize(self) -> int:
        """Events waiting (handed in, not yet taken)."""
        return self._waiting

    def empty(self) -> bool:
        return not self._batches

    async def put(self, batch: Sequence[SpaceEvent | DeltaRow]) -> None:
        """Hand in ``batch``; waits while the mailbox is full."""
        if not batch:
            return
        while self._waiting >= self.size:
            self._room.clear()
            await self._room.wait()
        self._batches.append(batch)
        self._waiting += len(batch)
        self._unfinished += len(batch)
        self._arrived.set()
        self._finished.clear()

    async def take(self) -> list[Sequence[SpaceEvent | DeltaRow]]:
        """Every batch waiting (waiting for one if none is); :meth:`done` once handled."""
        while not self._batches:
            self._arrived.clear()
            await self._arrived.wait()
        taken = list(self._batches)
        self._batches.clear()
        self._waiting = 0
        self._room.set()
        return taken

    def done(self, events: int) -> None:
        """``events`` taken were handled."""
        self._unfinished = max(0, self._unfinished - events)
        if not self._unfinished:
            self._finished.set()

    async def join(self) -> None:
        """Wait until every event handed in was handled."""
        await self._finished.wait()


class SpaceActor:
    """Owns one space's live state. Events come through :meth:`tell`; queries read
    :meth:`live` without touching the store. Construct, then :meth:`recover` before
    :meth:`run`."""

    def __init__(
        self,
        space_id: str,
        history: History,
        *,
        mailbox_size: int = 10_000,
        window_ms: int = DEFAULT_WINDOW_MS,
        on_applied: Callable[[str, int], None] | None = None,
        on_late: Callable[[], None] | None = None,
        clock: Callable[[], int] = now_ms,
        changes: ChangeFeed | None = None,
    ) -> None:
        self.space_id = space_id
        self.history = history
        self._mailbox_size = mailbox_size
        self._mailbox: Mailbox | None = None
        self.window_ms = window_ms
        self._on_applied = on_applied
        self._on_late = on_late
        self._clock = clock
        self._changes = changes
        self._live: LiveSpace | None = None
        self.late_events = 0
        self.reloads = 0
        #: Events handed in, and of those the ones folded into the live state: a caller of
        #: :meth:`tell_and_wait` waits for the second to reach its own.
        self._told = 0
        self._folded = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] | None = None  # made when needed

    @property
    def mailbox(self) -> Mailbox:
        """The actor's mailbox, made when first needed: with a hundred thousand spaces, most
        of them idle, empty mailboxes cost a fifth of the service's memory."""
        if self._mailbox is None:
            self._mailbox = Mailbox(self._mailbox_size)
        return self._mailbox

    @property
    def has_mailbox(self) -> bool:
        """Whether anything was ever sent to the actor (its mailbox exists)."""
        return self._mailbox is not None

    @property
    def ready(self) -> bool:
        return self._live is not None

    def live(self) -> SpaceState:
        """The fold of everything this actor has received, as of now."""
        if self._live is None:
            raise RuntimeError(f"space {self.space_id!r} is still recovering")
        return self._live.now(self._clock())

    async def tell(self, event: SpaceEvent) -> None:
        """Hand an event (already durably stored) to the actor; waits while the mailbox is
        full, so a slow actor slows ingest instead of growing memory."""
        await self.mailbox.put((event,))
        self._told += 1

    async def tell_all(self, events: Sequence[SpaceEvent | DeltaRow]) -> None:
        """Hand several events (already durably stored) to the actor at once: one hand-off
        for what one ingest batch brings the space. Waits while the mailbox is full."""
        await self.mailbox.put(events)
        self._told += len(events)

    async def tell_and_wait(self, event: SpaceEvent) -> None:
        """:meth:`tell`, then wait until the live state has folded the event (the actor must
        be running): a reset made through the API shows in the live count at once."""
        await self.tell(event)
        ticket = self._told
        if self._folded >= ticket:
            return
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append((ticket, waiter))
        await waiter

    def _mark_folded(self, folded: int) -> None:
        """The live state now holds every event handed in up to the ``folded``-th."""
        self._folded = max(self._folded, folded)
        if not self._waiters:
            return
        still = []
        for ticket, waiter in self._waiters:
            if ticket <= self._folded:
                if not waiter.done():
                    waiter.set_result(None)
            elif not waiter.done():
                still.append((ticket, waiter))
        self._waiters = still

    def checkpoint_for(self, newest: int | None, closed_before: int | None = None) -> int:
        """Where recovery settles the state, given the newest event time stored for the
        space: one window behind it (never ahead of now: a DPU clock may be). With nothing
        stored, nothing is settled: every event can still be placed in memory. Never before
        a log closed by ``partitions detach`` (``closed_before``): nothing can arrive there,
        and the state there is the snapshot written at the boundary."""
        checkpoint = _BEFORE_ALL if newest is None else min(self._clock(), newest) - self.window_ms
        return checkpoint if closed_before is None else max(checkpoint, closed_before - 1)

    async def recover(self, closed_before: int | EllipsisType | None = ...) -> None:
        """Rebuild the live state from the store: the state at the checkpoint (snapshot +
        log), then every event after it. Events still in the mailbox that the store already
        holds are recognised as duplicates when they are applied. After a restart the state
        recovered is published (a ``correction``): the events of a crashed drain were not.
        ``closed_before``: where the log was closed (``EventLog.closed_before``), when the
        caller read it for many spaces at once; read here otherwise."""
        restarting = self._live is not None
        view = SpaceView.of(self.history.topology, self.space_id)
        stored = self.history.store.log
        if closed_before is ...:
            closed_before = await stored.closed_before()
        newest = await stored.newest_ts(s.dpu_id for s in view.sources)
        checkpoint = self.checkpoint_for(newest, closed_before)
        settled = (await self.history.count_at(self.space_id, checkpoint)).state
        recent = [
            event
            async for event in space_events(
                self.history.store, view, after=checkpoint, until=_FAR_FUTURE
            )
        ]
        self.restore(settled, checkpoint, recent)
        if restarting and self._live is not None:
            self._publish(self._live, self._live.state.as_of, Cause.CORRECTION)

    def restore(self, settled: SpaceState, checkpoint: int, recent: list[SpaceEvent]) -> None:
        """Start from a recovered state: ``settled`` at ``checkpoint``, ``recent`` after it."""
        self._live = LiveSpace(
            self.history.topology.space(self.space_id), settled, checkpoint, recent
        )
        # Everything handed in and no longer in the mailbox was stored first: it is folded now.
        self._mark_folded(self._told - (self._mailbox.qsize() if self._mailbox else 0))

    async def run(self) -> None:
        """Apply events from the mailbox until cancelled. Events too late to place in memory
        are in the store already: one reload from the store serves all of those that arrived
        together (a DPU's backlog), once the mailbox is empty. The events taken together
        make one change on the feed (see :meth:`_publish`)."""
        live = self._live
        if live is None:
            raise RuntimeError("recover() before run()")
        while True:
            batches = await self.mailbox.take()
            taken = sum(map(len, batches))
            try:
                # Nothing awaits until the batches are folded: nobody can subscribe meanwhile.
                listened = self._changes is not None and self._changes.wants(self.space_id)
                outcomes = self._apply(live, itertools.chain.from_iterable(batches))
                cause = _cause(outcomes) if listened else None
                if outcomes.too_late:
                    self.reloads += 1
                    settled = (await self.history.count_at(self.space_id, live.checkpoint)).state
                    before = live.state
                    live.reload(settled)
                    if _figures(before) != _figures(live.state):
                        cause = Cause.CORRECTION
                if cause is not None:
                    self._publish(live, live.state.as_of, cause)
                self._mark_folded(self._told - self.mailbox.qsize())
            finally:
                self.mailbox.done(taken)

    def _apply(self, live: LiveSpace, events: Iterable[SpaceEvent | DeltaRow]) -> Outcomes:
        """Fold events; those ``too_late`` need the checkpoint reloaded from the store."""
        outcomes = live.apply_all(events)
        late = outcomes.too_late + outcomes.refolded
        if late:
            self.late_events += late
            if self._on_late is not None:
                for _ in range(late):
                    self._on_late()
        newest = live.newest_ts
        if newest is not None and newest - self.window_ms > live.checkpoint + self.window_ms:
            live.settle(newest - self.window_ms)
        applied = outcomes.appended + outcomes.refolded + outcomes.too_late
        if applied and self._on_applied is not None:
            self._on_applied(self.space_id, applied)
        return outcomes

    def _publish(self, live: LiveSpace, ts: int | None, cause: Cause) -> None:
        """Tell the change feed the live state, when anyone listens to this space: once per
        mailbox drain (the events that arrived together), so under load a subscriber gets
        one change per batch and space, never a stale last one."""
        changes = self._changes
        if changes is None or not changes.wants(self.space_id):
            return
        state = live.now(self._clock())
        changes.publish(
            Change(self.space_id, ts or 0, state.count, state.entrances, state.exits, cause)
        )

    def publish_state(self, ts: int, cause: Cause) -> None:
        """Publish the live state as it is now (a daily reset passed, say), if recovered."""
        if self._live is not None:
            self._publish(self._live, ts, cause)


def _cause(outcomes: Outcomes) -> Cause | None:
    """The cause of a change made of several events: a late one makes it a correction, else a
    reset a reset. Every delta folded changes entrances or exits; a reset is published even
    when it sets the count it had (whoever made it may wait for it). Duplicates change nothing;
    events too late to place are judged after the reload."""
    if outcomes.refolded:
        return Cause.CORRECTION
    if outcomes.resets:
        return Cause.RESET
    if outcomes.appended:
        return Cause.TRAVERSAL
    return None


def _figures(state: SpaceState) -> tuple[int, int, int]:
    return state.count, state.entrances, state.exits
