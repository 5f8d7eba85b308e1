"""Pages of a space's events and its resets equal a naive reference over the same events.

The History property test's scenarios (late events, duplicates, manual and daily resets across
DST, snapshots, replays, a topology flip) drive it; the reference lists and folds every event
from the start, sharing no code with the fold. Pages are also fetched one at a time while the
scenario keeps appending, late events included: no event is shown twice, none that was there
when the listing began is skipped, and every ``count_after`` is the fold of the log as it was
when that page was read.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from headcount.domain.events import Reset, Traversal
from headcount.domain.topology import Topology
from headcount.eventstore.store import EventStore
from headcount.history import History
from headcount.history.timeline import Key, events_page, resets_between
from tests.history.test_counts_property import (
    SLOT,
    SLOTS,
    SPACES,
    T0,
    Played,
    Scenario,
    _daily_resets,
    _wipe,
    scenarios,
)

#: (ts, kind, dpu_id, seq, doorway, direction, delta, count_after), as the API lists an event.
Listed = tuple[int, str, str | None, int | None, str | None, int | None, int, int]
RANK = {"daily_reset": -1, "reset": 0, "traversal": 1}


def _doorway(topo: Topology, dpu_id: str, ts: int) -> str | None:
    for a in topo.assignments:
        if (
            a.dpu_id == dpu_id
            and a.valid_from <= ts
            and (a.valid_until is None or ts < a.valid_until)
        ):
            return a.doorway_id
    return None


def reference_events(
    topo: Topology,
    traversals: set[Traversal],
    resets: set[Reset],
    space_id: str,
    start: int,
    end: int,
) -> list[Listed]:
    """Every event of the space with ``start <= ts < end``, oldest first, folded from the
    start of time by DESIGN.md's rule."""
    items: list[tuple[int, int, str, int, str | None, int | None, int]] = []
    items += [(t, -1, "", 0, None, None, 0) for t in _daily_resets(topo, space_id, end)]
    items += [(r.ts, 0, "", 0, None, None, r.count) for r in resets if r.space_id == space_id]
    for t in traversals:
        doorway = _doorway(topo, t.dpu_id, t.ts)
        if doorway is None:
            continue
        for link in topo.doorways[doorway].links:
            if link.space_id == space_id:
                items.append(
                    (
                        t.ts,
                        1,
                        t.dpu_id,
                        t.seq,
                        doorway,
                        t.direction,
                        t.direction * link.sensor_placement,
                    )
                )
    floor = not topo.spaces[space_id].allow_negative
    count = 0
    listed: list[Listed] = []
    for ts, rank, dpu, seq, doorway, direction, value in sorted(items):
        before = count
        count = value if rank < 1 else count + value
        if floor:
            count = max(count, 0)
        if not start <= ts < end:
            continue
        if rank == 1:
            listed.append((ts, "traversal", dpu, seq, doorway, direction, value, count))
        else:
            kind = "reset" if rank == 0 else "daily_reset"
            listed.append((ts, kind, None, None, None, None, count - before, count))
    return listed


def _key(e: Listed) -> Key:
    return (e[0], RANK[e[1]], e[2] or "", e[3] or 0)


async def _page(
    store: EventStore,
    topo: Topology,
    space_id: str,
    window: tuple[int, int],
    size: int,
    descending: bool,
    beyond: Key | None,
) -> tuple[list[Listed], Key | None]:
    page = await events_page(
        History(store, topo),
        space_id,
        start=window[0],
        end=window[1],
        page_size=size,
        descending=descending,
        beyond=beyond,
    )
    got: list[Listed] = [
        (e.ts, e.kind, e.dpu_id, e.seq, e.doorway, e.direction, e.delta, e.count_after)
        for e in page.events
    ]
    assert [e[1] for e in got] == [e.kind for e in page.events]
    return got, page.next


@dataclass
class Listing:
    """A listing fetched a page at a time while the scenario goes on."""

    space_id: str
    window: tuple[int, int]
    size: int
    descending: bool
    seen: list[Listed]
    at_start: set[Key] | None = None
    beyond: Key | None = None
    done: bool = False


times = st.integers(T0 - SLOT, T0 + (SLOTS + 1) * SLOT)


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    scenario=scenarios(),
    space_id=st.sampled_from(SPACES),
    bounds=st.tuples(times, times).filter(lambda b: b[0] != b[1]).map(sorted),
    size=st.integers(1, 7),
    descending=st.booleans(),
)
async def test_pages_and_resets_equal_the_reference(
    store: EventStore,
    scenario: Scenario,
    space_id: str,
    bounds: list[int],
    size: int,
    descending: bool,
) -> None:
    await _wipe(store)
    played = Played(scenario)
    window = (bounds[0], bounds[1])
    now = T0 + 10 * SLOTS * SLOT
    listing = Listing(space_id, window, size, descending, [])

    async def next_page() -> None:
        """One more page of the listing, checked against the log as it is now."""
        if listing.done:
            return
        expected = reference_events(
            played.topo, played.stored, played.stored_resets, space_id, *window
        )
        if listing.at_start is None:
            listing.at_start = {_key(e) for e in expected}
        got, listing.beyond = await _page(
            store, played.topo, space_id, window, size, descending, listing.beyond
        )
        by_key = {_key(e): e for e in expected}
        assert [by_key.get(_key(e)) for e in got] == got  # count_after as the log is now
        listing.seen += got
        listing.done = listing.beyond is None

    for kind, arg in scenario.steps:
        if not await played.step(store, kind, arg, now=now):
            await next_page()
    while not listing.done:
        await next_page()
    topo, stored, stored_resets = played.topo, played.stored, played.stored_resets

    # The listing that ran beside the appends: in order, nothing twice, nothing skipped.
    keys = [_key(e) for e in listing.seen]
    assert keys == sorted(set(keys), reverse=descending)
    assert listing.at_start is not None
    assert listing.at_start <= set(keys)

    # Now the log is still: every page, either way, concatenated is the reference list.
    expected = reference_events(topo, stored, stored_resets, space_id, *window)
    for order in (True, False):
        pages: list[Listed] = []
        beyond: Key | None = None
        while True:
            got, beyond = await _page(store, topo, space_id, window, size, order, beyond)
            assert len(got) <= size
            pages += got
            if beyond is None:
                break
        assert pages == (expected[::-1] if order else expected)

    listed = await resets_between(History(store, topo), space_id, start=window[0], end=window[1])
    assert [(r.ts, r.kind, r.count) for r in listed] == [
        (e[0], e[1], e[7]) for e in expected if e[1] != "traversal"
    ]
