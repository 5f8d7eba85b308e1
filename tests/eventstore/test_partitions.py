"""The log's monthly partitions on PostgreSQL: the migration keeps every answer, duplicates
stay duplicates across months, months are made ahead and detached without changing the
answers from the boundary on. On SQLite nothing is partitioned."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter
from typing import Any

import pytest
from alembic import command
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from headcount.cli.partitions import _snapshots_at
from headcount.domain.events import Reset, Traversal
from headcount.domain.topology import Topology
from headcount.errors import StoreDataError
from headcount.eventstore import migrate, partitions
from headcount.eventstore.partitions import Month, PartitionUpkeep
from headcount.eventstore.store import EventStore
from headcount.history import History
from headcount.history.replay import Replay
from headcount.history.series import series
from headcount.history.timeline import events_page
from tests.conftest import SEED

JAN = Month(2018, 1)
MAR = Month(2018, 3)
DAY = 86_400_000


def seed_topology() -> Topology:
    return Topology.from_toml((SEED / "topology.toml").read_text(), source="seed")


def events(count: int, *, first: Month, months: int, seed: int = 7) -> list[Traversal]:
    """``count`` traversals of the seed's two DPUs spread over ``months`` months."""
    rng = random.Random(seed)
    span = first.start, Month(first.year, first.month + months - 1).end
    found = []
    for dpu_id in ("283", "423"):
        stamps = sorted(rng.randrange(*span) for _ in range(count // 2))
        found += [
            Traversal(dpu_id, i + 1, ts, rng.choice((1, 1, -1))) for i, ts in enumerate(stamps)
        ]
    return found


async def answers(store: EventStore, topology: Topology) -> dict[str, Any]:
    """Counts, events pages, series and a replay's states: what the migration must keep."""
    history = History(store, topology)
    times = [JAN.start + k * 7 * DAY + 3_600_000 * k for k in range(17)]
    found: dict[str, Any] = {}
    for space_id in topology.spaces:
        found[f"count {space_id}"] = [(await history.count_at(space_id, t)).count for t in times]
        page = await events_page(
            history, space_id, start=JAN.start, end=Month(2018, 5).start, page_size=40
        )
        found[f"page {space_id}"] = [(e.ts, e.dpu_id, e.seq, e.count_after) for e in page.events]
        buckets = await series(history, space_id, times)
        found[f"series {space_id}"] = [
            (b.start, b.count, b.min, b.max, b.entrances, b.exits) for b in buckets
        ]
    _, states = await Replay(store, topology).states_at(times)
    found["replay"] = {s: [st.count for st in sts] for s, sts in states.items()}
    return found


def postgres_only(url: str) -> None:
    if not url.startswith("postgresql"):
        pytest.skip("partitions are PostgreSQL's; SQLite keeps one table")


async def _downgrade(store: EventStore, revision: str) -> None:
    async with store.engine.begin() as conn:
        await conn.run_sync(lambda c: command.downgrade(migrate.alembic_config(c), revision))


async def test_sqlite_keeps_one_table(store: EventStore) -> None:
    if store.backend != "sqlite":
        pytest.skip("the SQLite side")
    assert not await partitions.is_partitioned(store.engine)
    assert await partitions.ensure_ahead(store.engine, now=MAR.start) == []
    assert await partitions.list_partitions(store.engine) == []
    await PartitionUpkeep(store.engine).run()  # returns at once: nothing to keep


async def test_the_migration_keeps_every_answer(store_url: str) -> None:
    postgres_only(store_url)
    topology = seed_topology()
    first = events(600, first=JAN, months=2)
    async with await EventStore.open(store_url) as store:
        await store.log.append(first)
        await History(store, topology, snapshot_every=50, snapshot_lag_ms=0).refresh_snapshots(
            now=Month(2018, 5).start
        )
        await _downgrade(store, "0002")
        # More rows stored by the previous schema: a third month, and a reset.
        later = events(200, first=MAR, months=1, seed=8)
        async with store.engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO traversals (dpu_id, seq, ts, direction, received_at, late)"
                    " VALUES (:d, :s, :t, :dir, 0, false)"
                ),
                [
                    {"d": e.dpu_id, "s": e.seq + 10_000, "t": e.ts, "dir": e.direction}
                    for e in later
                ],
            )
            await conn.execute(
                text(
                    "INSERT INTO resets (space_id, ts, count, source, recorded_at)"
                    f" VALUES ('A', {MAR.start + 5 * DAY}, 3, 'test', 0)"
                )
            )
        assert not await partitions.is_partitioned(store.engine)
        before = await answers(store, topology)
        head_before = await store.log.head()

    async with await EventStore.open(store_url) as store:
        assert await partitions.is_partitioned(store.engine)
        assert await answers(store, topology) == before
        assert await store.log.head() == head_before
        listed = {p.month: p for p in await partitions.list_partitions(store.engine)}
        assert set(listed) == {JAN, Month(2018, 2), MAR, None}
        # The position sequence goes on; a stored key is still a duplicate, and a reused seq
        # with another time still a conflict, though its month differs.
        appended = await store.log.append(
            [first[0], Traversal(first[1].dpu_id, first[1].seq, Month(2018, 4).start, 1)]
        )
        assert appended.duplicates == 1
        assert [c.stored for c in appended.conflicts] == [first[1]]
        new = await store.log.append([Traversal("283", 99_999, Month(2018, 4).start, 1)])
        assert new.positions[0] > head_before.position


async def test_a_month_made_later_takes_its_rows_from_the_default_partition(
    store: EventStore,
) -> None:
    postgres_only(store.engine.url.render_as_string())
    topology = seed_topology()
    stored = events(300, first=JAN, months=3)
    result = await store.log.append(stored)
    before = await answers(store, topology)
    assert [p.table for p in await partitions.list_partitions(store.engine)] == [partitions.DEFAULT]

    made = await partitions.create(store.engine, [JAN, Month(2018, 2), MAR])

    assert made == [JAN, Month(2018, 2), MAR]
    assert await partitions.create(store.engine, [JAN]) == []
    assert await answers(store, topology) == before
    assert await partitions.default_months(store.engine) == []
    async with store.engine.connect() as conn:
        positions = await conn.execute(text(f"SELECT position FROM {JAN.table}"))
        assert {p for (p,) in positions} <= set(result.positions)


async def test_months_are_made_ahead(store: EventStore) -> None:
    postgres_only(store.engine.url.render_as_string())
    now = Month(2026, 11).start + 5 * DAY

    made = await partitions.ensure_ahead(store.engine, now=now, ahead=2)

    assert made == [Month(2026, 11), Month(2026, 12), Month(2027, 1)]
    assert await partitions.ensure_ahead(store.engine, now=now, ahead=2) == []


async def test_detach_keeps_the_answers_from_the_boundary_on(store: EventStore) -> None:
    postgres_only(store.engine.url.render_as_string())
    topology = seed_topology()
    stored = events(400, first=JAN, months=4)
    await store.log.append(stored)
    await partitions.create(store.engine, [JAN, Month(2018, 2), MAR, Month(2018, 4)])
    history = History(store, topology)
    times = [MAR.start - 1, *(MAR.start + k * 3 * DAY for k in range(20))]
    before = {s: [(await history.count_at(s, t)).count for t in times] for s in topology.spaces}

    boundary = await partitions.close_before(store.engine, MAR)
    assert boundary == MAR.start == await partitions.archived_before(store.engine)
    assert await _snapshots_at(store, history, boundary - 1) == len(topology.spaces)
    detached = await partitions.detach_before(store.engine, MAR)

    assert detached == [JAN, Month(2018, 2)]
    fresh = History(store, topology)
    after = {s: [(await fresh.count_at(s, t)).count for t in times] for s in topology.spaces}
    assert after == before
    listed = {p.table: p.attached for p in await partitions.list_partitions(store.engine)}
    assert listed[JAN.table] is False
    assert listed[MAR.table] is True
    # Before the boundary the store refuses: a late event there would make the boundary's
    # snapshots unusable. A redelivery of a detached event is refused too, never re-stored.
    for late in (Traversal("283", 77_777, MAR.start - 10, 1), stored[0]):
        with pytest.raises(StoreDataError, match="archived"):
            await store.log.append([late])
    with pytest.raises(StoreDataError, match="archived"):
        await store.log.append_reset(Reset("A", MAR.start - 5, 0, "test"))
    with pytest.raises(partitions.ArchivedError, match="before"):
        await partitions.create(store.engine, [Month(2018, 2)])
    assert after == {
        s: [(await fresh.count_at(s, t)).count for t in times] for s in topology.spaces
    }


async def test_detach_refuses_rows_left_in_the_default_partition(store: EventStore) -> None:
    postgres_only(store.engine.url.render_as_string())
    await store.log.append(events(20, first=JAN, months=1))

    with pytest.raises(partitions.ArchivedError, match="partitions create --from 2018-01"):
        await partitions.close_before(store.engine, MAR)

    assert await partitions.archived_before(store.engine) is None


def test_months() -> None:
    assert Month.parse("2026-11") == Month(2026, 11)
    assert str(Month(2026, 1)) == "2026-01"
    assert Month(2026, 12).next() == Month(2027, 1)
    assert Month.of(Month(2026, 3).start) == Month(2026, 3)
    assert Month.of(Month(2026, 3).start - 1) == Month(2026, 2)
    assert Month(2026, 2).end == Month(2026, 3).start
    assert Month(2026, 2).table == "traversals_y2026m02"
    for bad in ("26-11", "2026/11"):
        with pytest.raises(ValueError, match="not a month: write YYYY-MM"):
            Month.parse(bad)
    for bad in ("2026-13", "1969-12"):
        with pytest.raises(ValueError, match="no partition month"):
            Month.parse(bad)


async def test_the_upkeep_makes_the_coming_months_at_start(store: EventStore) -> None:
    postgres_only(store.engine.url.render_as_string())
    frozen = Month(2030, 6).start + 3 * DAY
    upkeep = PartitionUpkeep(store.engine, ahead=1, every_s=3_600, clock=lambda: frozen)
    running = asyncio.create_task(upkeep.run(), name="partitions")
    try:
        async with asyncio.timeout(30):
            while {p.month for p in await partitions.list_partitions(store.engine)} != {
                Month(2030, 6),
                Month(2030, 7),
                None,
            }:
                await asyncio.sleep(0.05)
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running


#: Times in three months made as partitions, and one in no month (the DEFAULT partition).
SPREAD = (JAN.start, JAN.start + 5, Month(2018, 2).start - 1, Month(2018, 2).start, MAR.start + 9)
traversals_st = st.builds(
    Traversal,
    st.sampled_from(("a", "b")),
    st.integers(0, 12),
    st.sampled_from((*SPREAD, Month(2019, 7).start)),
    st.sampled_from((1, -1)),
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batches=st.lists(st.lists(traversals_st, min_size=1, max_size=8), min_size=1, max_size=4))
async def test_duplicates_and_conflicts_are_the_same_across_months(
    store: EventStore, batches: list[list[Traversal]]
) -> None:
    """Against the rule itself: a report of a stored ``(dpu_id, seq)`` is a duplicate when it
    is the stored event, else a conflict, whatever month either falls in."""
    async with store.engine.begin() as conn:
        for table in ("quarantine", "traversals", "traversal_keys"):
            if table != "traversal_keys" or store.backend == "postgresql":
                await conn.execute(text(f"DELETE FROM {table}"))
    await partitions.create(store.engine, [JAN, Month(2018, 2), MAR])
    stored: dict[tuple[str, int], Traversal] = {}
    for batch in batches:
        new, duplicates, conflicts = [], 0, []
        for t in batch:
            if t.key not in stored:
                stored[t.key] = t
                new.append(t)
            elif stored[t.key] == t:
                duplicates += 1
            else:
                conflicts.append((t, stored[t.key]))

        result = await store.log.append(batch)

        assert Counter(result.new) == Counter(new)
        assert result.duplicates == duplicates
        assert Counter((c.reported, c.stored) for c in result.conflicts) == Counter(conflicts)
    assert await store.log.count_traversals() == len(stored)
