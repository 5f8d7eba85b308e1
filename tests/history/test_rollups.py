"""A series from stored rollups (``domain.rollups``) against the same series folded from the
log: written with snapshots by a refresh and by a replay, spoiled by a late traversal or a
reset stored after them, superseded by a replay, left out under another topology."""

from __future__ import annotations

import random
from itertools import pairwise

from sqlalchemy import delete, func, select

from headcount.domain.events import Reset, Traversal
from headcount.domain.rollups import BUCKET_MS, MIN_EVENTS, RollupBuilder
from headcount.domain.topology import Topology
from headcount.eventstore.answers import KIND, RESET, ROLLUP, TRAVERSAL
from headcount.eventstore.records import RolledUp
from headcount.eventstore.schema import rollups
from headcount.eventstore.store import EventStore
from headcount.history import History, SpaceView
from headcount.history.replay import Replay
from headcount.history.series import Bucket, boundaries, series

DAY = 86_400_000
#: Midnight UTC; events over two days.
T = 1_767_225_600_000
NOW = T + 3 * DAY


def topology(placement: int = 1, daily_reset: str | None = "04:00") -> Topology:
    space: dict[str, object] = {"id": "A", "name": "A", "time_zone": "Europe/Berlin"}
    if daily_reset is not None:
        space["daily_reset"] = daily_reset
    return Topology.from_dict(
        {
            "spaces": [space],
            "doorways": [
                {"id": "X", "name": "X", "links": [{"space": "A", "sensor_placement": placement}]}
            ],
            "assignments": [
                {"dpu": "d1", "doorway": "X", "valid_from": "2018-01-01T00:00:00Z"},
                {"dpu": "d2", "doorway": "X", "valid_from": "2018-01-01T00:00:00Z"},
            ],
        }
    )


def walk(n: int, seed: int = 3) -> list[Traversal]:
    """Traversals over two days: most in busy hours (a rollup stored for each of their
    buckets), some anywhere (quiet buckets, which are left to the log), none in most nights
    (long stretches without events, stored as one rollup)."""
    rng = random.Random(seed)
    found = []
    for seq in range(n):
        day = rng.randrange(2) * DAY
        ts = T + day + (9 * 3_600_000 + rng.randrange(5 * 3_600_000) if rng.random() < 0.8
                        else rng.randrange(8 * 3_600_000, 22 * 3_600_000))  # fmt: skip
        found.append(Traversal(rng.choice(("d1", "d2")), seq, ts, rng.choice((1, -1, 1))))
    return found


def bounds(interval: str, start: int, end: int) -> list[int]:
    found = []
    for b in boundaries(interval, "Europe/Berlin", start):
        found.append(b)
        if b >= end:
            return found
    raise AssertionError  # pragma: no cover


async def stored_rollups(store: EventStore) -> int:
    async with store.engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(rollups)) or 0)


async def used(store: EventStore, topo: Topology, start: int, end: int) -> int:
    """How many rollups a series of the window reads."""
    view = SpaceView.of(topo, "A")
    found = await store.answers.rollups("A", view.fingerprint, view.sources, start=start, end=end)
    return sum(1 for row in found or () if row[KIND] == ROLLUP)


async def folded_from_the_log(store: EventStore, topo: Topology, cuts: list[int]) -> list[Bucket]:
    """The series with every rollup gone: the fold of the log's rows."""
    async with store.engine.begin() as conn:
        await conn.execute(delete(rollups))
    return await series(History(store, topo), "A", cuts)


async def test_a_refresh_rolls_up_and_the_series_equals_the_log(store: EventStore) -> None:
    topo = topology()
    await store.log.append(walk(3000))
    await History(store, topo, snapshot_every=50, snapshot_lag_ms=0).refresh_snapshots(now=NOW)
    assert await stored_rollups(store) > 0
    windows = [
        bounds("5m", T + 9 * 3_600_000, T + 15 * 3_600_000),
        bounds("1h", T, T + 2 * DAY),
        bounds("1d", T - DAY, T + 3 * DAY),
    ]
    got = [await series(History(store, topo), "A", cuts) for cuts in windows]
    assert all([await used(store, topo, cuts[0], cuts[-1]) for cuts in windows])
    assert got == [await folded_from_the_log(store, topo, cuts) for cuts in windows]


async def test_late_traversals_and_resets_spoil_only_their_buckets(store: EventStore) -> None:
    topo = topology()
    await store.log.append(walk(2000))
    history = History(store, topo, snapshot_every=50, snapshot_lag_ms=0)
    await history.refresh_snapshots(now=NOW)
    # Late: into rolled-up buckets, a burst that drives the count to the floor and back.
    late = [Traversal("d1", 10_000 + i, T + DAY + 7 * BUCKET_MS + i, -1) for i in range(40)]
    late += [Traversal("d2", 20_000 + i, T + DAY + 30 * BUCKET_MS + i, 1) for i in range(5)]
    await store.log.append(late)
    await store.log.append_reset(Reset("A", T + 5 * 3_600_000 + 17, 9, "test"))
    cuts = bounds("15m", T, T + 2 * DAY)
    got = await series(History(store, topo), "A", cuts)
    assert await used(store, topo, cuts[0], cuts[-1])
    assert got == await folded_from_the_log(store, topo, cuts)


async def test_a_replay_rolls_up_anew_and_supersedes(store: EventStore) -> None:
    topo = topology()
    await store.log.append(walk(1500))
    await History(store, topo, snapshot_every=40, snapshot_lag_ms=0).refresh_snapshots(now=NOW)
    before = await stored_rollups(store)
    await store.log.append([Traversal("d1", 9_000, T + 3_600_000 + 5, -1)])  # late
    await Replay(store, topo, snapshot_every=40, snapshot_lag_ms=0).run()
    assert await stored_rollups(store) > before
    cuts = bounds("5m", T, T + DAY)
    got = await series(History(store, topo), "A", cuts)
    assert await used(store, topo, cuts[0], cuts[-1])
    assert got == await folded_from_the_log(store, topo, cuts)


async def test_rollups_of_another_topology_are_not_used(store: EventStore) -> None:
    await store.log.append(walk(1000))
    await History(store, topology(), snapshot_every=40, snapshot_lag_ms=0).refresh_snapshots(
        now=NOW
    )
    flipped = topology(placement=-1)
    cuts = bounds("1h", T, T + 2 * DAY)
    assert not await used(store, flipped, cuts[0], cuts[-1])
    got = await series(History(store, flipped), "A", cuts)
    assert got == await folded_from_the_log(store, flipped, cuts)


async def test_refreshes_go_on_from_where_the_rollups_end(store: EventStore) -> None:
    """Events arriving over time, refreshed as they come: each refresh goes on from where
    the stored rollups end, so none is stored twice, whichever refresh made it."""
    topo = topology(daily_reset=None)
    events = sorted(walk(2400, seed=5), key=lambda t: t.ts)
    history = History(store, topo, snapshot_every=30, snapshot_lag_ms=BUCKET_MS)
    for i in range(0, len(events), 300):
        await store.log.append(events[i : i + 300])
        await history.refresh_snapshots(now=NOW)
    async with store.engine.connect() as conn:
        spans = (
            await conn.execute(
                select(rollups.c.bucket_start, rollups.c.bucket_end, rollups.c.events).order_by(
                    rollups.c.bucket_start
                )
            )
        ).all()
    assert all(a.bucket_end <= b.bucket_start for a, b in pairwise(spans))
    # The busy hours are rolled up; the quiet ones, skipped, are left to the log.
    busy = [s for s in spans if s.events]
    assert len(busy) > 100
    assert sum(s.events for s in busy) / len(busy) >= MIN_EVENTS
    cuts = bounds("5m", T, T + 2 * DAY)
    got = await series(History(store, topo), "A", cuts)
    assert got == await folded_from_the_log(store, topo, cuts)


async def test_rollups_an_event_reached_after_their_fold_are_not_stored(
    store: EventStore,
) -> None:
    """Folded up to a head, written later: a rollup whose time an event reached in between
    would miss it, and so would every one after it; none may end past the snapshots that
    cover the space either (a later event there would not be marked late)."""
    topo = topology(daily_reset=None)
    view = SpaceView.of(topo, "A")
    await store.log.append([Traversal("d1", i, T + i * 10_000, 1) for i in range(180)])
    head = await store.log.head()
    builder = RollupBuilder(topo.space("A"), T)
    builder.rows([(TRAVERSAL, T + i * 10_000, 1) for i in range(180)], RESET)
    made = builder.close(T + 6 * BUCKET_MS)
    assert [r.start for r in made] == [T + k * BUCKET_MS for k in range(6)]
    await store.log.append([Traversal("d2", 0, T + 3 * BUCKET_MS + 7, -1)])  # after the head

    async def stored_starts(covered: int) -> list[int]:
        async with store.engine.begin() as conn:
            await conn.execute(delete(rollups))
        await store.snapshots.add(
            [], view.sources, made=RolledUp("A", view.fingerprint, head, covered, made)
        )
        async with store.engine.connect() as conn:
            found = await conn.execute(select(rollups.c.bucket_start).order_by("bucket_start"))
            return [row.bucket_start for row in found]

    assert await stored_starts(T + DAY) == [T, T + BUCKET_MS, T + 2 * BUCKET_MS]
    assert await stored_starts(T + 2 * BUCKET_MS - 1) == [T, T + BUCKET_MS]
