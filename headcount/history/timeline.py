"""A space's events as a list: pages of the traversals and resets in a window, each with the
count it left, and the resets (manual and daily) in a window.

A page is chosen by key first (``eventstore.pages``: the events next to the cursor), then the
span it covers is folded once, from the newest usable snapshot before its first event, as
``History.count_at`` folds: so ``count_after`` is exact however deep in the log the page is,
late events and resets included. Keys are the fold order, a total order of the set of events,
so a cursor stays right while events keep arriving: nothing is skipped or shown twice.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from headcount.domain.events import (
    DAILY_RESET_RANK,
    RESET_RANK,
    TRAVERSAL_RANK,
    Delta,
    Reset,
    Traversal,
    space_delta,
)
from headcount.domain.fold import EMPTY, SpaceState, advance, daily_reset_window, fold
from headcount.domain.topology import Source, Space
from headcount.eventstore.pages import Key, page_keys
from headcount.eventstore.records import StoredReset
from headcount.eventstore.statements import resets_query
from headcount.history.counts import History
from headcount.history.events import SpaceView

__all__ = [
    "EventsPage",
    "Key",
    "ListedReset",
    "SpaceEventEntry",
    "daily_resets",
    "events_page",
    "resets_between",
]

Kind = Literal["traversal", "reset", "daily_reset"]


@dataclass(frozen=True, slots=True)
class SpaceEventEntry:
    """One event of a space as listed: a traversal (with its DPU, ``seq``, doorway and the
    DPU's ``direction``) or a reset (those are ``None``). ``delta`` is what it does to the
    space: a traversal's +1 or -1 (the floor at zero shows in ``count_after``), the change a
    reset made. ``count_after`` is the space's count once it is folded."""

    ts: int
    kind: Kind
    dpu_id: str | None
    seq: int | None
    doorway: str | None
    direction: int | None
    delta: int
    count_after: int

    @property
    def key(self) -> Key:
        """Its place in fold order (the cursor of a page that ends with it)."""
        if self.kind == "traversal" and self.dpu_id is not None and self.seq is not None:
            return (self.ts, TRAVERSAL_RANK, self.dpu_id, self.seq)
        rank = DAILY_RESET_RANK if self.kind == "daily_reset" else RESET_RANK
        return (self.ts, rank, "", 0)


@dataclass(frozen=True, slots=True)
class EventsPage:
    """A page of a space's events, in the order asked; ``next`` is the cursor of the page
    after it (``None``: this is the last)."""

    space_id: str
    events: tuple[SpaceEventEntry, ...]
    next: Key | None


@dataclass(frozen=True, slots=True)
class ListedReset:
    """A reset of a space: ``kind`` ``reset`` (stored, made by hand or a tool: ``source``) or
    ``daily_reset`` (the space's daily reset time, never stored)."""

    ts: int
    count: int
    kind: Literal["reset", "daily_reset"]
    source: str


def daily_resets(space: Space, start: int, end: int) -> Iterator[int]:
    """The space's daily reset instants with ``start <= ts < end``, oldest first (none when
    it has no daily reset). Each local day has exactly one, across DST changes."""
    if space.daily_reset is None or start >= end:
        return
    last, upcoming = daily_reset_window(space, start)
    instant = last if last >= start else upcoming
    while instant < end:
        yield instant
        instant = daily_reset_window(space, instant)[1]


def _daily_resets_newest_first(space: Space, start: int, end: int) -> Iterator[int]:
    if space.daily_reset is None or start >= end:
        return
    instant = daily_reset_window(space, end - 1)[0]
    while instant >= start:
        yield instant
        instant = daily_reset_window(space, instant - 1)[0]


def _daily_keys(
    space: Space, start: int, end: int, beyond: Key | None, descending: bool, limit: int
) -> list[Key]:
    """The keys of the space's daily resets in ``[start, end)`` beyond ``beyond``, nearest it
    first, at most ``limit``."""
    if beyond is not None:  # nothing on the other side of the cursor's millisecond counts
        start, end = (
            (start, min(end, beyond[0] + 1)) if descending else (max(start, beyond[0]), end)
        )
    instants = (
        _daily_resets_newest_first(space, start, end)
        if descending
        else daily_resets(space, start, end)
    )
    found: list[Key] = []
    for instant in instants:
        key = (instant, DAILY_RESET_RANK, "", 0)
        if beyond is None or (key < beyond if descending else key > beyond):
            found.append(key)
            if len(found) == limit:
                break
    return found


async def events_page(
    history: History,
    space_id: str,
    *,
    start: int,
    end: int,
    page_size: int,
    descending: bool = True,
    beyond: Key | None = None,
) -> EventsPage:
    """The space's events with ``start <= ts < end`` beyond the cursor ``beyond`` (the
    ``next`` of the page before; ``None``: the first page), ``page_size`` of them, newest
    first unless not ``descending``. A duplicate delivery is one event; a traversal counts
    for the space only while its DPU's doorway links it. Raises ``UnknownSpaceError``."""
    if page_size < 1:
        raise ValueError("page_size must be at least 1")
    space = history.topology.space(space_id)
    view = SpaceView.of(history.topology, space_id)
    store = history.store
    async with store.log.reading() as within:  # the keys and the fold see one log
        keys = await page_keys(
            within,
            space_id,
            view.sources,
            start=start,
            end=end,
            beyond=beyond,
            descending=descending,
            limit=page_size + 1,
        )
        keys += _daily_keys(space, start, end, beyond, descending, page_size + 1)
        keys = sorted(set(keys), reverse=descending)[: page_size + 1]
        page = keys[:page_size]
        if not page:
            return EventsPage(space_id, (), None)
        first, last = min(page), max(page)
        base = await history.usable_snapshot(view, at_or_before=first[0] - 1, within=within)
        state = EMPTY if base is None else base.state
        # A stack of the page's daily resets, the earliest last.
        daily = sorted((k[0] for k in page if k[1] == DAILY_RESET_RANK), reverse=True)
        listed: list[SpaceEventEntry] = []
        async for item in store.log.space_log(
            space_id, view.sources, after=state.as_of, until=last[0], within=within
        ):
            ts = item.ts if isinstance(item, StoredReset) else item[0].ts
            while daily and daily[-1] <= ts:
                state = _daily(space, state, daily.pop(), listed)
            state = _fold_item(space, state, item, first, last, listed)
        while daily:
            state = _daily(space, state, daily.pop(), listed)
    if descending:
        listed.reverse()
    return EventsPage(space_id, tuple(listed), page[-1] if len(keys) > page_size else None)


def _daily(space: Space, state: SpaceState, ts: int, listed: list[SpaceEventEntry]) -> SpaceState:
    """Fold the space's daily reset at ``ts`` and list it. The count it found is the one just
    before it: earlier daily resets since ``state`` (not in the page) have happened by then."""
    before = advance(space, state, ts - 1).count
    after = advance(space, state, ts)
    listed.append(
        SpaceEventEntry(
            ts, "daily_reset", None, None, None, None, after.count - before, after.count
        )
    )
    return after


def _fold_item(
    space: Space,
    state: SpaceState,
    item: StoredReset | tuple[Traversal, Source],
    first: Key,
    last: Key,
    listed: list[SpaceEventEntry],
) -> SpaceState:
    """Fold one item of ``EventLog.space_log`` and list it when its key is in the page."""
    if isinstance(item, StoredReset):
        before = advance(space, state, item.ts).count
        state = fold(space, state, Reset(item.space_id, item.ts, item.count, item.source))
        if first <= (item.ts, RESET_RANK, "", 0) <= last:
            listed.append(
                SpaceEventEntry(
                    item.ts, "reset", None, None, None, None, item.count - before, item.count
                )
            )
        return state
    traversal, source = item
    delta = Delta(
        traversal.ts,
        traversal.dpu_id,
        traversal.seq,
        space_delta(traversal.direction, source.sensor_placement),
    )
    state = fold(space, state, delta)
    if first <= (traversal.ts, TRAVERSAL_RANK, traversal.dpu_id, traversal.seq) <= last:
        listed.append(
            SpaceEventEntry(
                traversal.ts,
                "traversal",
                traversal.dpu_id,
                traversal.seq,
                source.doorway_id,
                traversal.direction,
                delta.delta,
                state.count,
            )
        )
    return state


async def resets_between(
    history: History, space_id: str, *, start: int, end: int
) -> list[ListedReset]:
    """The space's resets with ``start <= ts < end``, oldest first: the stored ones and its
    daily resets (a daily reset goes first of its millisecond, as the fold applies it).
    Raises ``UnknownSpaceError``."""
    space = history.topology.space(space_id)
    query = resets_query(space_id, after=start - 1, until=end - 1, max_id=None, after_id=None)
    async with history.store.log.reading() as within:
        stored = [StoredReset(*row) for row in await within.execute(query)]
    listed = [ListedReset(r.ts, r.count, "reset", r.source) for r in stored]
    listed += [ListedReset(ts, 0, "daily_reset", "daily") for ts in daily_resets(space, start, end)]
    return sorted(listed, key=lambda r: (r.ts, r.kind != "daily_reset"))
