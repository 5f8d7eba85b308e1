"""``count(space, ts)`` from snapshots and the log equals a naive fold of the same events.

The reference below is written from DESIGN.md's rule alone and shares no code with the fold:
deltas add, resets set (daily at 04:00 local, manual at their time), the count is floored at
zero after every event unless the space allows negatives, ties go (ts, daily reset, manual
reset, dpu_id, seq), duplicates count once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete

import headcount.domain.rollups as rollups_module
from headcount.domain.events import Reset, Traversal
from headcount.domain.rollups import BUCKET_MS
from headcount.domain.topology import Topology
from headcount.eventstore.answers import KIND, ROLLUP
from headcount.eventstore.schema import metadata, on_backend
from headcount.eventstore.store import EventStore
from headcount.history import History, SpaceView
from headcount.history.replay import Replay
from headcount.history.series import Bucket, bucket_page, series

HOUR = 3_600_000
SLOT = 3 * HOUR
# Spans the 2026-03-08 DST change in America/New_York, so daily resets cross it.
T0 = int(datetime(2026, 3, 6, tzinfo=UTC).timestamp() * 1000)
SLOTS = 24  # three-hour slots over three days: many events share a millisecond
SPACES = ("A", "B", "C")
NEW_YORK = "America/New_York"


def topology(move_at: int, d3_from: int, x_placement: int) -> Topology:
    """X joins outside and A; Z joins A and B; W joins B and C. DPU d2 moves from Z to W at
    ``move_at``; d3 only counts from ``d3_from``; ``x_placement`` flips d1's mounting."""
    return Topology.from_dict(
        {
            "spaces": [
                {"id": "A", "name": "A"},
                {"id": "B", "name": "B", "allow_negative": True},
                {"id": "C", "name": "C", "time_zone": NEW_YORK, "daily_reset": "04:00"},
            ],
            "doorways": [
                {
                    "id": "X",
                    "name": "X",
                    "links": [{"space": "A", "sensor_placement": x_placement}],
                },
                {
                    "id": "Z",
                    "name": "Z",
                    "links": [
                        {"space": "A", "sensor_placement": 1},
                        {"space": "B", "sensor_placement": -1},
                    ],
                },
                {
                    "id": "W",
                    "name": "W",
                    "links": [
                        {"space": "B", "sensor_placement": 1},
                        {"space": "C", "sensor_placement": -1},
                    ],
                },
            ],
            "assignments": [
                {"dpu": "d1", "doorway": "X", "valid_from": "2000-01-01T00:00:00Z"},
                {
                    "dpu": "d2",
                    "doorway": "Z",
                    "valid_from": "2000-01-01T00:00:00Z",
                    "valid_until": _iso(move_at),
                },
                {"dpu": "d2", "doorway": "W", "valid_from": _iso(move_at)},
                {"dpu": "d3", "doorway": "Z", "valid_from": _iso(d3_from)},
            ],
        },
        source="property-test",
    )


def _iso(ms: int) -> str:
    return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)).isoformat()


# -- the reference fold ----------------------------------------------------------------------


def _links(topo: Topology, dpu_id: str, ts: int) -> dict[str, int]:
    for a in topo.assignments:
        if (
            a.dpu_id == dpu_id
            and a.valid_from <= ts
            and (a.valid_until is None or ts < a.valid_until)
        ):
            return {
                link.space_id: link.sensor_placement for link in topo.doorways[a.doorway_id].links
            }
    return {}


def _daily_resets(topo: Topology, space_id: str, until: int, since: int = T0) -> list[int]:
    space = topo.spaces[space_id]
    if space.daily_reset is None:
        return []
    zone = ZoneInfo(space.time_zone)
    day = (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=since)).date()
    day -= timedelta(days=2)
    instants: list[int] = []
    while True:
        local = datetime.combine(day, space.daily_reset, tzinfo=zone)
        ms = int(local.timestamp() * 1000)
        if ms > until:
            return instants
        instants.append(ms)
        day += timedelta(days=1)


def reference_count(
    topo: Topology, traversals: set[Traversal], resets: set[Reset], space_id: str, ts: int
) -> int:
    items: list[tuple[int, int, str, int, int]] = []  # ts, rank, dpu, seq, value
    items += [(t, 0, "", 0, 0) for t in _daily_resets(topo, space_id, ts)]
    items += [(r.ts, 1, "", 0, r.count) for r in resets if r.space_id == space_id and r.ts <= ts]
    for t in traversals:
        placement = _links(topo, t.dpu_id, t.ts).get(space_id)
        if placement is not None and t.ts <= ts:
            items.append((t.ts, 2, t.dpu_id, t.seq, t.direction * placement))
    count = 0
    floor = not topo.spaces[space_id].allow_negative
    for _, rank, _, _, value in sorted(items):
        count = value if rank < 2 else count + value
        if floor:
            count = max(count, 0)
    return count


# -- scenarios -------------------------------------------------------------------------------

times = st.builds(
    lambda slot, ms: T0 + slot * SLOT + ms, st.integers(0, SLOTS), st.sampled_from([0, 0, 1])
)
traversals = st.builds(
    Traversal,
    dpu_id=st.sampled_from(["d1", "d2", "d3", "ghost"]),
    seq=st.integers(0, 10_000),
    ts=times,
    direction=st.sampled_from([1, -1]),
)
resets = st.builds(Reset, space_id=st.sampled_from(SPACES), ts=times, count=st.integers(0, 5))
queries = st.tuples(st.sampled_from(SPACES), st.integers(T0 - HOUR, T0 + (SLOTS + 1) * SLOT))


@dataclass(frozen=True)
class Scenario:
    move_at: int
    d3_from: int
    steps: list[tuple[str, object]]
    final_queries: list[tuple[str, int]]


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    events = draw(
        st.lists(traversals, min_size=5, max_size=60, unique_by=lambda t: (t.dpu_id, t.seq))
    )
    manual = draw(st.lists(resets, max_size=4, unique_by=lambda r: (r.space_id, r.ts)))
    repeats = draw(st.lists(st.sampled_from(events), max_size=10)) if events else []
    arrivals: list[Traversal | Reset] = draw(st.permutations([*events, *repeats, *manual]))
    steps: list[tuple[str, object]] = []
    i = 0
    while i < len(arrivals):
        n = draw(st.integers(1, 12))
        steps.append(("append", arrivals[i : i + n]))
        i += n
        step = draw(
            st.sampled_from(["none", "snapshot", "snapshot", "query", "query", "flip", "replay"])
        )
        if step == "snapshot":
            steps.append(("snapshot", draw(st.integers(1, 6))))
        elif step == "replay":
            from_ts = draw(st.none() | st.integers(T0, T0 + SLOTS * SLOT))
            steps.append(("replay", (draw(st.integers(1, 6)), from_ts)))
        elif step == "query":
            steps.append(("query", draw(queries)))
        elif step == "flip":
            steps.append(("flip", None))
    return Scenario(
        move_at=T0 + draw(st.integers(0, SLOTS)) * SLOT,
        d3_from=T0 + draw(st.integers(0, SLOTS)) * SLOT + draw(st.sampled_from([0, 1])),
        steps=steps,
        final_queries=draw(st.lists(queries, min_size=1, max_size=8)),
    )


async def _wipe(store: EventStore) -> None:
    async with store.engine.begin() as conn:
        for table in reversed(metadata.sorted_tables):
            if on_backend(table, conn.dialect.name):
                await conn.execute(delete(table))


@dataclass
class Played:
    """A scenario's steps done so far: the topology now (a flip mounts D3 the other way round)
    and the traversals and resets stored."""

    scenario: Scenario
    placement: int = 1
    stored: set[Traversal] = field(default_factory=set)
    stored_resets: set[Reset] = field(default_factory=set)

    @property
    def topo(self) -> Topology:
        return topology(self.scenario.move_at, self.scenario.d3_from, self.placement)

    async def step(self, store: EventStore, kind: str, arg: object, *, now: int) -> bool:
        """Do a step that changes the store or the topology; False for a query step, which is
        the test's own."""
        if kind == "append":
            assert isinstance(arg, list)
            batch = [e for e in arg if isinstance(e, Traversal)]
            await store.log.append(batch)
            self.stored.update(batch)
            for reset in (e for e in arg if isinstance(e, Reset)):
                await store.log.append_reset(reset)
                self.stored_resets.add(reset)
        elif kind == "snapshot":
            assert isinstance(arg, int)
            history = History(store, self.topo, snapshot_every=arg, snapshot_lag_ms=0)
            await history.refresh_snapshots(now=now)
        elif kind == "replay":
            assert isinstance(arg, tuple)
            every, from_ts = arg
            replay = Replay(store, self.topo, snapshot_every=every, snapshot_lag_ms=0)
            await replay.run(from_ts=from_ts)
            event("replayed from the start" if from_ts is None else "replayed from a time")
        elif kind == "flip":
            self.placement = -self.placement
        else:
            return False
        return True


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(scenario=scenarios())
async def test_count_at_equals_reference_fold(store: EventStore, scenario: Scenario) -> None:
    await _wipe(store)
    played = Played(scenario)
    now = T0 + 10 * SLOTS * SLOT

    async def check(space_id: str, ts: int) -> None:
        got = await History(store, played.topo).count_at(space_id, ts)
        expected = reference_count(played.topo, played.stored, played.stored_resets, space_id, ts)
        assert got.count == expected, (space_id, ts)
        event("answered from a snapshot" if got.snapshot is not None else "folded from the start")

    for kind, arg in scenario.steps:
        if not await played.step(store, kind, arg, now=now):
            assert isinstance(arg, tuple)
            await check(*arg)
    for space_id, ts in scenario.final_queries:
        await check(space_id, ts)
    topo, stored, stored_resets = played.topo, played.stored, played.stored_resets

    # A replay's pass agrees with the reference, and so does every snapshot answers may use.
    times = sorted({ts for _, ts in scenario.final_queries})
    _, folded = await Replay(store, topo).states_at(times)
    for space_id in SPACES:
        expected = [reference_count(topo, stored, stored_resets, space_id, ts) for ts in times]
        assert [s.count for s in folded[space_id]] == expected, space_id
    _, mismatches, _ = await Replay(store, topo).verify()
    assert mismatches == []


# -- series: buckets against the same reference, point by point ------------------------------


def reference_buckets(
    topo: Topology,
    traversals: set[Traversal],
    resets: set[Reset],
    space_id: str,
    bounds: tuple[int, ...],
) -> list[Bucket]:
    """Each bucket from the reference's items alone: the count it starts with (every item
    before it), then the count after each item in it, and its items by kind."""
    end = bounds[-1]
    items: list[tuple[int, int, str, int, int]] = []
    since = min(T0, bounds[0])  # a week's bucket starts up to six days before T0
    items += [(t, 0, "", 0, 0) for t in _daily_resets(topo, space_id, end, since)]
    items += [(r.ts, 1, "", 0, r.count) for r in resets if r.space_id == space_id]
    for t in traversals:
        placement = _links(topo, t.dpu_id, t.ts).get(space_id)
        if placement is not None:
            items.append((t.ts, 2, t.dpu_id, t.seq, t.direction * placement))
    items.sort()
    floor = not topo.spaces[space_id].allow_negative
    buckets = []
    for start, stop in pairwise(bounds):
        count = reference_count(topo, traversals, resets, space_id, start - 1)
        seen = [count]
        entrances = exits = events = 0
        for ts, rank, _, _, value in items:
            if not start <= ts < stop:
                continue
            events += 1
            count = value if rank < 2 else count + value
            if floor:
                count = max(count, 0)
            seen.append(count)
            entrances += rank == 2 and value > 0
            exits += rank == 2 and value < 0
        assert count == reference_count(topo, traversals, resets, space_id, stop - 1)
        buckets.append(Bucket(start, stop, count, min(seen), max(seen), entrances, exits, events))
    return buckets


def _minutes_short(
    window: tuple[int, int, str, str, int, int],
) -> tuple[int, int, str, str, int, int]:
    """Minute buckets over two hours at most: a few hundred buckets, not thousands."""
    start, length, interval, time_zone, page_size, every = window
    if interval in ("1m", "5m"):
        length = 1 + length % (2 * HOUR)
    return start, length, interval, time_zone, page_size, every


windows = st.tuples(
    st.integers(T0 - 6 * HOUR, T0 + (SLOTS + 1) * SLOT),  # start
    st.integers(1, 4 * 24 * HOUR),  # length
    st.sampled_from(["1m", "5m", "15m", "1h", "1d", "1w"]),
    st.sampled_from([NEW_YORK, "Europe/Berlin", "UTC", "Asia/Kolkata"]),
    st.integers(1, 40),  # page size
    st.sampled_from([0, 0, 1, 3]),  # snapshot every this many events at the end; 0: not
).map(_minutes_short)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(scenario=scenarios(), window=windows)
async def test_series_equals_reference_fold(
    store: EventStore,
    scenario: Scenario,
    window: tuple[int, int, str, str, int, int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Buckets across the 2026-03-08 change in New York, paged, from snapshots written as the
    events arrive (late ones and duplicates among them), equal the reference's. Every run of
    events is rolled up here, however quiet (a store skips the quiet ones)."""
    monkeypatch.setattr(rollups_module, "MIN_EVENTS", 0)
    await _wipe(store)
    played = Played(scenario)
    for kind, arg in scenario.steps:
        await played.step(store, kind, arg, now=T0 + 10 * SLOTS * SLOT)
    topo, stored, stored_resets = played.topo, played.stored, played.stored_resets
    start, length, interval, time_zone, page_size, every = window
    history = History(store, topo)
    if every:
        snapshots = History(store, topo, snapshot_every=every, snapshot_lag_ms=0)
        await snapshots.refresh_snapshots(now=T0 + 10 * SLOTS * SLOT)
    for space_id in SPACES:
        got: list[Bucket] = []
        bounds: list[int] = []
        cursor: int | None = start
        while cursor is not None:
            page = bucket_page(interval, time_zone, cursor, start + length, page_size)
            got += await series(history, space_id, page.bounds)
            bounds += page.bounds[:-1] if page.next_start is not None else page.bounds
            cursor = page.next_start
        expected = reference_buckets(topo, stored, stored_resets, space_id, tuple(bounds))
        assert got == expected, space_id
        view = SpaceView.of(topo, space_id)
        async with store.answers.snapshot_window(
            space_id, view.fingerprint, view.sources, before=start, end=start + length
        ) as read:
            event("series in one statement" if read is not None else "series, general path")
        if all(b % BUCKET_MS == 0 for b in bounds):
            found = await store.answers.rollups(
                space_id, view.fingerprint, view.sources, start=bounds[0], end=bounds[-1]
            )
            rolled = sum(1 for row in found or () if row[KIND] == ROLLUP)
            spoiled = sum(1 for row in found or () if row[KIND] != ROLLUP)
            event("rollups in the window" if rolled else "no rollups in the window")
            if rolled and spoiled:
                event("rollups and late events or resets in the window")
    event(f"series {interval}")
