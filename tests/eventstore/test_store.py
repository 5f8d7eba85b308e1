"""The event store's API, run against a real SQLite file and a real PostgreSQL database.

Every test gets a new, empty store from the ``store`` fixture (``tests/conftest.py``), once per
backend. Log positions order appends; inside one batch the store may store events in any order.
"""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import Iterator, Sequence

import pytest
from sqlalchemy import select

from headcount.domain.events import Direction, Reset, Traversal
from headcount.domain.fold import SpaceState
from headcount.domain.topology import Source
from headcount.errors import ConflictError, StoreError
from headcount.eventstore.answers import RESET, TRAVERSAL
from headcount.eventstore.records import (
    AppendResult,
    Conflict,
    Head,
    LateMark,
    Snapshot,
    StoredReset,
)
from headcount.eventstore.schema import traversals
from headcount.eventstore.store import EventStore
from tests.store_readers import late_marks, quarantined, read_resets, snapshots_before

FP = "f" * 64
OTHER_FP = "e" * 64


def ev(dpu_id: str, seq: int, ts: int, direction: Direction = 1) -> Traversal:
    return Traversal(dpu_id, seq, ts, direction)


def src(
    dpu_id: str,
    valid_from: int = 0,
    valid_until: int | None = None,
    *,
    doorway: str = "X",
    placement: Direction = 1,
) -> Source:
    return Source(dpu_id, doorway, placement, valid_from, valid_until)


def snap(
    space_id: str, as_of: int, head: Head, *, fingerprint: str = FP, count: int = 1
) -> Snapshot:
    return Snapshot(space_id, fingerprint, SpaceState(as_of, count, count, 0), head)


def essence(s: Snapshot) -> tuple[str, str, SpaceState, Head]:
    """A snapshot without ``taken_at`` (the wall clock of the write)."""
    return (s.space_id, s.fingerprint, s.state, s.head)


async def stored_rows(store: EventStore) -> dict[tuple[str, int], tuple[int, int, int, bool]]:
    """Every stored traversal, read straight from the table: key -> (ts, direction, position,
    late)."""
    async with store.engine.connect() as conn:
        rows = await conn.execute(
            select(
                traversals.c.dpu_id,
                traversals.c.seq,
                traversals.c.ts,
                traversals.c.direction,
                traversals.c.position,
                traversals.c.late,
            )
        )
        return {(r.dpu_id, r.seq): (r.ts, r.direction, r.position, r.late) for r in rows}


async def stream(
    store: EventStore,
    sources: Sequence[Source],
    *,
    after: int | None = None,
    until: int = 10**15,
    max_position: int | None = None,
) -> list[tuple[Traversal, Source]]:
    """The traversals ``space_log`` reads, each with its source; ``space_rows`` must read the
    same as rows ``(TRAVERSAL, ts, delta to the space)``."""
    head = None if max_position is None else Head(max_position, 0)
    found = [
        item
        async for item in store.log.space_log(
            "no resets", sources, after=after, until=until, head=head
        )
        if not isinstance(item, StoredReset)
    ]
    rows = [
        row
        async for batch in store.log.space_rows(
            "no resets", sources, after=after, until=until, head=head
        )
        for row in batch
    ]
    assert rows == [(TRAVERSAL, t.ts, t.direction * s.sensor_placement) for t, s in found]
    return found


async def warm_pool(store: EventStore) -> None:
    """Open several connections first, so that concurrent calls start together rather than
    one connection set-up after another."""
    await asyncio.gather(*(store.log.head() for _ in range(5)))


# -- append --------------------------------------------------------------------------------


async def test_append_stores_new_events_once(store: EventStore) -> None:
    batch = [ev("283", 1, 1_000), ev("283", 2, 2_000, -1), ev("423", 7, 1_500)]

    first = await store.log.append(batch, received_at=42)

    assert sorted(first.new, key=lambda t: t.key) == batch
    assert len(first.positions) == 3
    assert first.duplicates == 0
    assert first.conflicts == ()
    rows = await stored_rows(store)
    assert {key: row[:2] for key, row in rows.items()} == {
        ("283", 1): (1_000, 1),
        ("283", 2): (2_000, -1),
        ("423", 7): (1_500, 1),
    }
    assert [rows[t.key][2] for t in first.new] == list(first.positions)

    again = await store.log.append(batch)

    assert again == AppendResult(new=(), positions=(), duplicates=3, conflicts=())
    assert await store.log.count_traversals() == 3
    assert await store.log.head() == Head(position=max(first.positions), reset_id=0)


async def test_duplicates_inside_one_batch_count_once(store: EventStore) -> None:
    a, b, c = ev("d1", 1, 100), ev("d1", 2, 200), ev("d2", 1, 150)

    result = await store.log.append([a, b, a, c, a, b])

    assert sorted(result.new, key=lambda t: t.key) == [a, b, c]
    assert result.duplicates == 3
    assert result.conflicts == ()
    assert await store.log.count_traversals() == 3


async def test_duplicates_across_batches_count_once(store: EventStore) -> None:
    a, b, c = ev("d1", 1, 100), ev("d1", 2, 200), ev("d2", 1, 150)
    first = await store.log.append([a, b])

    second = await store.log.append([b, c, b, a])

    assert second.new == (c,)
    assert second.duplicates == 3
    assert second.conflicts == ()
    assert second.positions[0] > max(first.positions)
    assert await store.log.count_traversals() == 3


CLASHES = [
    pytest.param(ev("423", 9, 5_001), id="other-ts"),
    pytest.param(ev("423", 9, 5_000, -1), id="other-direction"),
    pytest.param(ev("423", 9, 4_000, -1), id="other-ts-and-direction"),
]


@pytest.mark.parametrize("clash", CLASHES)
async def test_clash_inside_one_batch_is_quarantined(store: EventStore, clash: Traversal) -> None:
    kept = ev("423", 9, 5_000)

    result = await store.log.append([kept, clash, ev("423", 10, 6_000)], received_at=77)

    assert sorted(result.new, key=lambda t: t.key) == [kept, ev("423", 10, 6_000)]
    assert result.duplicates == 0
    assert result.conflicts == (Conflict(reported=clash, stored=kept),)
    (entry,) = await quarantined(store)
    assert "DPU '423' seq 9" in entry.reason
    assert f"ts={clash.ts} direction={clash.direction}" in entry.reason
    assert entry.received_at == 77
    assert (await stored_rows(store))[("423", 9)][:2] == (5_000, 1)


@pytest.mark.parametrize("clash", CLASHES)
async def test_clash_with_a_stored_event_is_quarantined(
    store: EventStore, clash: Traversal
) -> None:
    kept = ev("423", 9, 5_000)
    await store.log.append([kept])
    position_before = (await stored_rows(store))[("423", 9)][2]

    result = await store.log.append([clash, ev("283", 1, 5_000)])

    assert result.new == (ev("283", 1, 5_000),)
    assert result.duplicates == 0
    assert result.conflicts == (Conflict(reported=clash, stored=kept),)
    (entry,) = await quarantined(store)
    assert "DPU '423' seq 9" in entry.reason
    assert "already stored as ts=5000 direction=1" in entry.reason
    assert entry.origin.endswith("423")
    assert b"423" in entry.payload
    assert (await stored_rows(store))[("423", 9)] == (5_000, 1, position_before, False)

    # The same clash again is quarantined again: nothing that arrives is silently dropped.
    again = await store.log.append([clash])
    assert again.conflicts == (Conflict(reported=clash, stored=kept),)
    assert len(await quarantined(store)) == 2
    assert await store.log.count_traversals() == 2


async def test_redelivery_next_to_a_clash_is_a_duplicate(store: EventStore) -> None:
    """A clash and an exact redelivery in one batch: each report is judged against the
    stored row, not against the batch's first report of the key."""
    stored = ev("283", 5, 1_000)
    await store.log.append([stored])
    clash = ev("283", 5, 2_000)

    result = await store.log.append([clash, stored])

    assert result.conflicts == (Conflict(reported=clash, stored=stored),)
    assert result.duplicates == 1
    reasons = [q.reason for q in await quarantined(store)]
    assert all("already stored as ts=1000 direction=1" in r for r in reasons), reasons


async def test_positions_increase_in_append_order(store: EventStore) -> None:
    batch = [ev("d2", 3, 900), ev("d1", 9, 100), ev("d2", 1, 500), ev("d1", 2, 700)]

    first = await store.log.append(batch)
    second = await store.log.append([ev("d0", 1, 1), ev("d1", 9, 100)])
    third = await store.log.append([ev("d9", 1, 5), ev("d0", 2, 2)])

    # ``new`` lists what was stored in log order, whatever order the batch had.
    assert set(first.new) == set(batch)
    assert list(first.positions) == sorted(set(first.positions))
    assert len(first.positions) == 4
    assert second.new == (ev("d0", 1, 1),)
    assert second.positions[0] > max(first.positions)
    assert set(third.new) == {ev("d9", 1, 5), ev("d0", 2, 2)}
    assert min(third.positions) > second.positions[0]
    rows = await stored_rows(store)
    assert [rows[t.key][2] for t in [*first.new, *second.new, *third.new]] == [
        *first.positions,
        *second.positions,
        *third.positions,
    ]
    assert await store.log.head() == Head(max(third.positions), 0)


async def test_empty_batch_changes_nothing(store: EventStore) -> None:
    assert await store.log.append([]) == AppendResult(
        new=(), positions=(), duplicates=0, conflicts=()
    )
    assert await store.log.append(iter(())) == AppendResult((), (), 0, ())
    assert await store.log.head() == Head(0, 0)
    assert await store.log.count_traversals() == 0


async def test_batch_larger_than_a_chunk(store: EventStore) -> None:
    batch = [ev(f"d{i % 3}", i, 10_000 + i, 1 if i % 2 else -1) for i in range(1_234)]
    # Repeats of events from the first chunk, placed in the third.
    repeated = [*batch, *batch[:100]]

    result = await store.log.append(repeated)

    assert sorted(result.new, key=lambda t: t.seq) == batch
    assert result.duplicates == 100
    assert list(result.positions) == sorted(set(result.positions))
    rows = await stored_rows(store)
    assert [rows[t.key][2] for t in result.new] == list(result.positions)
    assert await store.log.count_traversals() == 1_234

    # Re-send everything with ten changed events spread over the chunks.
    changed = {3, 499, 500, 501, 999, 1_000, 1_001, 1_100, 1_232, 1_233}
    resent = [ev(t.dpu_id, t.seq, t.ts + 1) if t.seq in changed else t for t in batch]
    again = await store.log.append(resent)

    assert again.new == ()
    assert again.duplicates == 1_224
    assert sorted(c.reported.seq for c in again.conflicts) == sorted(changed)
    assert all(c.stored == batch[c.reported.seq] for c in again.conflicts)
    assert len(await quarantined(store, limit=50)) == 10
    assert await store.log.count_traversals() == 1_234


# -- concurrency ---------------------------------------------------------------------------


def overlapping_batches(
    count: int, size: int, batches: int, *, seed: int, shuffled: bool
) -> tuple[list[Traversal], list[list[Traversal]]]:
    """Distinct events and ``batches`` overlapping random samples of them (each with a few
    repeats inside). Unless ``shuffled``, every batch lists events in the same order."""
    rng = random.Random(seed)
    events = [
        ev(f"d{i % 5}", seed * 100_000 + i, 1_000 + i, rng.choice((1, -1))) for i in range(count)
    ]
    out = []
    for _ in range(batches):
        batch = rng.sample(events, size)
        batch += rng.sample(batch, 5)
        if not shuffled:
            batch.sort(key=lambda t: (t.dpu_id, t.seq))
        out.append(batch)
    return events, out


def check_concurrent(
    events: list[Traversal], batches: list[list[Traversal]], results: Sequence[AppendResult]
) -> None:
    submitted = {t.key for batch in batches for t in batch}
    new_keys = [t.key for r in results for t in r.new]
    assert len(new_keys) == len(set(new_keys)), "an event was stored by two appends"
    assert set(new_keys) == submitted
    assert sum(len(r.new) + r.duplicates for r in results) == sum(len(b) for b in batches)
    assert all(r.conflicts == () for r in results)
    positions = [p for r in results for p in r.positions]
    assert len(set(positions)) == len(positions)
    by_key = {t.key: t for t in events}
    assert all(by_key[t.key] == t for r in results for t in r.new)


async def test_concurrent_overlapping_appends_store_each_event_once(store: EventStore) -> None:
    events, batches = overlapping_batches(600, 250, 6, seed=1, shuffled=False)

    results = await asyncio.gather(*(store.log.append(b) for b in batches))

    check_concurrent(events, batches, results)
    rows = await stored_rows(store)
    assert set(rows) == {t.key for b in batches for t in b}
    assert {key: row[:2] for key, row in rows.items()} == {
        t.key: (t.ts, t.direction) for b in batches for t in b
    }


async def test_concurrent_clashing_appends_keep_one_version(store: EventStore) -> None:
    versions = [[ev("d1", seq, 1_000 * k + seq) for seq in range(50)] for k in range(1, 5)]

    results = await asyncio.gather(*(store.log.append(v) for v in versions))

    rows = await stored_rows(store)
    assert len(rows) == 50
    assert sum(len(r.new) for r in results) == 50
    assert sum(len(r.conflicts) for r in results) == 150
    for r in results:
        for c in r.conflicts:
            assert (c.stored.ts, c.stored.direction) == rows[c.stored.key][:2]
    assert len(await quarantined(store, limit=1_000)) == 150


async def test_concurrent_appends_in_different_orders(store: EventStore) -> None:
    await warm_pool(store)
    for seed in range(4):
        events, batches = overlapping_batches(1_000, 300, 6, seed=seed + 10, shuffled=True)

        results = await asyncio.gather(*(store.log.append(b) for b in batches))

        check_concurrent(events, batches, results)


# -- the late flag -------------------------------------------------------------------------


async def test_nothing_is_late_without_snapshots(store: EventStore) -> None:
    await store.log.append([ev("d1", 1, 5_000), ev("d1", 2, 1)])
    await store.log.append([ev("d2", 1, 0)])

    rows = await stored_rows(store)
    assert [row[3] for row in rows.values()] == [False, False, False]


async def test_late_means_at_or_before_the_newest_snapshot(store: EventStore) -> None:
    head = await store.log.head()
    await store.snapshots.add([snap("A", 500, head), snap("A", 1_000, head)], [src("d1")])
    await store.snapshots.add([snap("B", 700, head)], [src("d2")])

    await store.log.append([ev("d1", 1, 999), ev("d1", 2, 1_000), ev("d1", 3, 1_001)])
    # Late against the store's newest snapshot, whichever space it is of.
    await store.log.append([ev("d9", 1, 800), ev("d9", 2, 5_000)])

    late = {key: row[3] for key, row in (await stored_rows(store)).items()}
    assert late == {
        ("d1", 1): True,
        ("d1", 2): True,
        ("d1", 3): False,
        ("d9", 1): True,
        ("d9", 2): False,
    }


async def test_late_flag_is_decided_once(store: EventStore) -> None:
    await store.log.append([ev("d1", 1, 100)])
    await store.snapshots.add([snap("A", 1_000, await store.log.head())], [src("d1")])

    await store.log.append([ev("d1", 1, 100), ev("d1", 2, 100)])

    late = {key: row[3] for key, row in (await stored_rows(store)).items()}
    assert late == {("d1", 1): False, ("d1", 2): True}


# -- resets --------------------------------------------------------------------------------


async def test_append_reset_stores_once(store: EventStore) -> None:
    stored = await store.log.append_reset(Reset("A", 1_000, 12))

    assert stored == StoredReset(stored.id, "A", 1_000, 12, "manual")
    assert stored.id > 0
    assert await store.log.append_reset(Reset("A", 1_000, 12)) == stored
    # Same count, other source: the stored reset stands.
    assert await store.log.append_reset(Reset("A", 1_000, 12, source="daily")) == stored
    assert await store.log.head() == Head(0, stored.id)
    assert await read_resets(store, "A", after=None, until=10**15) == [stored]


async def test_reset_with_another_count_at_the_same_time_conflicts(store: EventStore) -> None:
    stored = await store.log.append_reset(Reset("A", 1_000, 12, source="count by hand"))

    with pytest.raises(ConflictError, match=r"space 'A' already has a reset to 12"):
        await store.log.append_reset(Reset("A", 1_000, 13))

    other_space = await store.log.append_reset(Reset("B", 1_000, 13))
    other_time = await store.log.append_reset(Reset("A", 1_001, 13))
    assert len({stored.id, other_space.id, other_time.id}) == 3
    assert await read_resets(store, "A", after=None, until=10**15) == [stored, other_time]


async def test_identical_resets_appended_at_once(store: EventStore) -> None:
    await warm_pool(store)
    for ts in range(1_000, 1_010):
        stored = await asyncio.gather(
            *(store.log.append_reset(Reset("A", ts, 3)) for _ in range(6))
        )

        assert len({s.id for s in stored}) == 1
    assert len(await read_resets(store, "A", after=None, until=10**15)) == 10


@pytest.fixture
async def resets(store: EventStore) -> dict[int, StoredReset]:
    """Resets of space A by ts, appended out of time order, with resets of B between them."""
    found = {}
    for ts in (300, 100, 400, 200):
        found[ts] = await store.log.append_reset(Reset("A", ts, ts // 100))
        await store.log.append_reset(Reset("B", ts, 7))
    return found


@pytest.mark.parametrize(
    ("after", "until", "after_id", "max_id", "expected"),
    [
        pytest.param(None, 10**15, None, None, [100, 200, 300, 400], id="all"),
        pytest.param(100, 300, None, None, [200, 300], id="after-excl-until-incl"),
        pytest.param(None, 99, None, None, [], id="until-before-all"),
        pytest.param(400, 10**15, None, None, [], id="after-the-last"),
        pytest.param(None, 10**15, 300, None, [100, 200, 400], id="after_id"),
        pytest.param(None, 10**15, None, 100, [100, 300], id="max_id"),
        pytest.param(None, 10**15, 100, 100, [], id="empty-id-range"),
        pytest.param(100, 400, 300, 400, [400], id="all-bounds"),
    ],
)
async def test_read_resets_bounds(
    store: EventStore,
    resets: dict[int, StoredReset],
    after: int | None,
    until: int,
    after_id: int | None,
    max_id: int | None,
    expected: list[int],
) -> None:
    """``after_id`` and ``max_id`` name a reset of A by its ts (ids are only known once
    stored). A's resets were appended in the ts order 300, 100, 400, 200."""
    found = await read_resets(
        store,
        "A",
        after=after,
        until=until,
        after_id=None if after_id is None else resets[after_id].id,
        max_id=None if max_id is None else resets[max_id].id,
    )

    assert found == [resets[ts] for ts in expected]
    assert all(r.space_id == "A" and r.count == r.ts // 100 for r in found)


# -- a space's traversals (space_log) -----------------------------------------------------


async def test_stream_is_in_fold_order(store: EventStore) -> None:
    events = [
        ev("b", 2, 100),
        ev("a", 5, 100),
        ev("b", 1, 100),
        ev("a", 6, 50),
        ev("c", 1, 100, -1),
        ev("a", 4, 200),
        ev("a", 3, 100),
    ]
    random.Random(3).shuffle(events)
    for event in events:
        await store.log.append([event])
    sources = [src("c", doorway="Z", placement=-1), src("a"), src("b", doorway="Y")]

    rows = await stream(store, sources)

    assert [t for t, _ in rows] == sorted(events, key=lambda t: (t.ts, t.dpu_id, t.seq))
    assert [s.doorway_id for _, s in rows] == ["X", "X", "X", "Y", "Y", "Z", "X"]


async def test_a_long_stream_continues_past_the_first_page_in_fold_order(
    store: EventStore,
) -> None:
    """Past the first page the rest streams from the last row's key: rows that share its
    millisecond must be neither lost nor repeated."""
    events = [ev(dpu, seq, 1_000 + seq // 7) for seq in range(900) for dpu in ("a", "b", "c")]
    for dpu in ("a", "b", "c"):
        await store.log.append([e for e in events if e.dpu_id == dpu])

    rows = await stream(store, [src("a"), src("b", doorway="Y"), src("c", doorway="Z")])

    assert len(rows) > 1_000
    assert [t for t, _ in rows] == sorted(events, key=lambda t: (t.ts, t.dpu_id, t.seq))
    # One batch per DPU: positions 1-900 are a's, then b's, then c's.
    bounded = await stream(
        store, [src("a"), src("b", doorway="Y"), src("c", doorway="Z")], max_position=2_000
    )
    assert [t for t, _ in bounded] == sorted(
        (e for e in events if e.dpu_id != "c" or e.seq < 200),
        key=lambda t: (t.ts, t.dpu_id, t.seq),
    )


@pytest.mark.parametrize(
    ("after", "until", "expected"),
    [
        pytest.param(None, 10**15, [100, 200, 300, 400], id="unbounded"),
        pytest.param(200, 10**15, [300, 400], id="after-is-exclusive"),
        pytest.param(None, 300, [100, 200, 300], id="until-is-inclusive"),
        pytest.param(100, 300, [200, 300], id="both"),
        pytest.param(199, 200, [200], id="one-ms"),
        pytest.param(200, 200, [], id="empty-window"),
        pytest.param(400, 10**15, [], id="after-the-last"),
    ],
)
async def test_stream_time_bounds(
    store: EventStore, after: int | None, until: int, expected: list[int]
) -> None:
    await store.log.append([ev("d1", i, 100 * i) for i in (4, 2, 1, 3)])

    rows = await stream(store, [src("d1")], after=after, until=until)

    assert [t.ts for t, _ in rows] == expected


async def test_stream_honours_validity_intervals(store: EventStore) -> None:
    # d1 served doorway X until 200, then doorway Y; d2 counts for [150, 250) only.
    x, y = src("d1", 100, 200, doorway="X"), src("d1", 200, None, doorway="Y", placement=-1)
    z = src("d2", 150, 250, doorway="Z")
    await store.log.append([ev("d1", i, ts) for i, ts in enumerate((99, 100, 199, 200, 300))])
    await store.log.append([ev("d2", i, ts) for i, ts in enumerate((149, 150, 249, 250))])
    await store.log.append([ev("d3", 1, 150)])

    rows = await stream(store, [y, z, x])

    assert [(t.dpu_id, t.ts, s) for t, s in rows] == [
        ("d1", 100, x),
        ("d2", 150, z),
        ("d1", 199, x),
        ("d1", 200, y),
        ("d2", 249, z),
        ("d1", 300, y),
    ]
    bounded = await stream(store, [y, z, x], after=199, until=249)
    assert [(t.dpu_id, t.ts, s) for t, s in bounded] == [("d1", 200, y), ("d2", 249, z)]


async def test_rows_merge_resets_before_the_traversals_of_their_millisecond(
    store: EventStore,
) -> None:
    await store.log.append(
        [ev("d1", i, ts, -1 if i % 2 else 1) for i, ts in enumerate((100, 200, 300))]
    )
    await store.log.append_reset(Reset("A", 200, 7))
    await store.log.append_reset(Reset("A", 50, 1))
    await store.log.append_reset(Reset("A", 400, 3))
    await store.log.append_reset(Reset("B", 250, 9))
    head = await store.log.head()
    await store.log.append_reset(Reset("A", 350, 5))  # after the head: not read

    rows = [
        row
        async for batch in store.log.space_rows(
            "A", [src("d1", placement=-1)], after=None, until=10**15, head=head
        )
        for row in batch
    ]

    assert rows == [
        (RESET, 50, 1),
        (TRAVERSAL, 100, -1),
        (RESET, 200, 7),
        (TRAVERSAL, 200, 1),
        (TRAVERSAL, 300, -1),
        (RESET, 400, 3),
    ]


async def test_stream_up_to_a_log_position(store: EventStore) -> None:
    first = await store.log.append([ev("d1", 1, 500), ev("d1", 2, 100)])
    await store.log.append([ev("d1", 3, 50), ev("d1", 4, 700)])

    rows = await stream(store, [src("d1")], max_position=max(first.positions))
    everything = await stream(store, [src("d1")])

    assert [t.seq for t, _ in rows] == [2, 1]
    assert [t.seq for t, _ in everything] == [3, 2, 1, 4]


@pytest.mark.parametrize(
    "sources",
    [
        pytest.param([], id="no-sources"),
        pytest.param([src("silent")], id="dpu-without-events"),
        pytest.param([src("d1", 0, 100)], id="interval-before-events"),
        pytest.param([src("d1", 10_000)], id="interval-after-until"),
        pytest.param([src("d1", 100, 100)], id="empty-interval"),
    ],
)
async def test_stream_with_no_rows(store: EventStore, sources: list[Source]) -> None:
    await store.log.append([ev("d1", 1, 100), ev("d1", 2, 200)])

    assert await stream(store, sources, until=5_000) == []


# -- snapshots -----------------------------------------------------------------------------


async def test_snapshots_before_is_newest_first_within_a_fingerprint(store: EventStore) -> None:
    head = await store.log.head()
    stored = await store.snapshots.add(
        [
            snap("A", 100, head, count=1),
            snap("A", 300, head, count=3),
            snap("A", 200, head, count=2),
        ],
        [src("d1")],
    )
    await store.snapshots.add([snap("A", 250, head, fingerprint=OTHER_FP)], [src("d1")])
    await store.snapshots.add([snap("B", 150, head)], [src("d2")])

    assert [s.as_of for s in stored] == [100, 300, 200]
    found = await snapshots_before(store, "A", FP, at_or_before=250, limit=10)
    assert [(s.as_of, s.state.count) for s in found] == [(200, 2), (100, 1)]
    assert [essence(s) for s in found] == [essence(stored[2]), essence(stored[0])]
    newest = await snapshots_before(store, "A", FP, at_or_before=10**15, limit=2)
    assert [s.as_of for s in newest] == [300, 200]
    assert [
        s.as_of for s in await snapshots_before(store, "A", FP, at_or_before=300, limit=10)
    ] == [
        300,
        200,
        100,
    ]
    assert await snapshots_before(store, "A", FP, at_or_before=99, limit=10) == []
    other = await snapshots_before(store, "A", OTHER_FP, at_or_before=10**15, limit=10)
    assert [(s.space_id, s.fingerprint, s.as_of) for s in other] == [("A", OTHER_FP, 250)]
    assert await snapshots_before(store, "C", FP, at_or_before=10**15, limit=10) == []


async def test_stored_snapshots_carry_the_head_at_writing_time(store: EventStore) -> None:
    old = await store.log.head()
    # Events after the snapshot's head that cannot touch A before its time.
    await store.log.append([ev("d2", 1, 50)])  # another DPU
    await store.log.append([ev("d1", 1, 900)])  # after the snapshot's time
    await store.log.append_reset(Reset("B", 50, 4))  # another space
    now = await store.log.head()

    stored = await store.snapshots.add([snap("A", 500, old)], [src("d1")])

    assert now != old
    assert [essence(s) for s in stored] == [("A", FP, SpaceState(500, 1, 1, 0), now)]
    assert stored[0].taken_at > 0
    (read,) = await snapshots_before(store, "A", FP, at_or_before=500, limit=1)
    assert read == stored[0]


async def test_add_snapshots_drops_those_a_later_traversal_lands_before(store: EventStore) -> None:
    await store.log.append([ev("d1", 1, 150)])  # covered by the snapshots' head: harmless
    head = await store.log.head()
    await store.log.append([ev("d1", 2, 250)])  # after the head, at 250
    await store.log.append([ev("d1", 3, 120)])  # outside the source's interval: harmless
    await store.log.append([ev("d2", 1, 50)])  # another DPU: harmless
    candidates = [snap("A", t, head) for t in (100, 200, 249, 250, 300)]

    stored = await store.snapshots.add(candidates, [src("d1", 130)])

    assert [s.as_of for s in stored] == [100, 200, 249]
    found = await snapshots_before(store, "A", FP, at_or_before=10**15, limit=10)
    assert [s.as_of for s in found] == [249, 200, 100]
    assert {s.head for s in found} == {await store.log.head()}


async def test_add_snapshots_drops_those_a_later_reset_lands_before(store: EventStore) -> None:
    await store.log.append_reset(Reset("A", 50, 9))  # covered by the head
    head = await store.log.head()
    await store.log.append_reset(Reset("A", 200, 1))
    await store.log.append_reset(Reset("B", 100, 1))  # another space

    stored = await store.snapshots.add(
        [snap("A", t, head) for t in (100, 199, 200, 300)], [src("d1")]
    )

    assert [s.as_of for s in stored] == [100, 199]
    assert [s.as_of for s in await snapshots_before(store, "A", FP, at_or_before=999, limit=9)] == [
        199,
        100,
    ]


async def test_add_snapshots_edge_cases(store: EventStore) -> None:
    assert await store.snapshots.add([], [src("d1")]) == []
    head = await store.log.head()
    with pytest.raises(ValueError, match="one space"):
        await store.snapshots.add([snap("A", 1, head), snap("B", 1, head)], [src("d1")])
    # A snapshot of a space nothing reaches is kept.
    stored = await store.snapshots.add([snap("A", 1, head)], [])
    assert [s.as_of for s in stored] == [1]


async def test_late_marks_are_late_traversals_through_the_sources(store: EventStore) -> None:
    await store.log.append([ev("d1", 1, 100)])  # before any snapshot: not late
    await store.snapshots.add([snap("A", 1_000, await store.log.head())], [src("d1")])
    first = await store.log.append([ev("d1", 2, 500), ev("d2", 1, 600), ev("d1", 3, 1_500)])
    second = await store.log.append([ev("d1", 4, 800), ev("d1", 5, 50)])
    pos = dict(
        zip(
            [t.key for t in [*first.new, *second.new]],
            [*first.positions, *second.positions],
            strict=True,
        )
    )
    sources = [src("d1", 60)]

    marks = await late_marks(store, sources, after_position=0, until=2_000)
    later = await late_marks(store, sources, after_position=pos[("d1", 2)], until=2_000)
    early = await late_marks(store, sources, after_position=0, until=700)

    assert sorted(marks, key=lambda m: m.position) == [
        LateMark("d1", 500, pos[("d1", 2)]),
        LateMark("d1", 800, pos[("d1", 4)]),
    ]
    assert later == [LateMark("d1", 800, pos[("d1", 4)])]
    assert early == [LateMark("d1", 500, pos[("d1", 2)])]
    assert await late_marks(store, [], after_position=0, until=2_000) == []
    both = await late_marks(store, [*sources, src("d2")], after_position=0, until=2_000)
    assert len(both) == 3


# -- topologies ----------------------------------------------------------------------------

TOPOLOGY = '[[spaces]]\nid = "A"\nname = "A"\n'
CHANGED = TOPOLOGY + '\n[[spaces]]\nid = "B"\nname = "B"\n'


async def test_record_topology_only_records_changes(store: EventStore) -> None:
    assert await store.topologies.current() is None

    assert await store.topologies.record(TOPOLOGY, origin="site.toml") is True
    assert await store.topologies.record(TOPOLOGY, origin="other.toml") is False
    assert await store.topologies.current() == (TOPOLOGY, "site.toml")

    assert await store.topologies.record(CHANGED, origin="site-v2.toml") is True
    assert await store.topologies.current() == (CHANGED, "site-v2.toml")

    # Going back to the first document is a change again.
    assert await store.topologies.record(TOPOLOGY, origin="rollback.toml") is True
    assert await store.topologies.current() == (TOPOLOGY, "rollback.toml")


# -- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "message"),
    [
        pytest.param(
            "mysql://x", r"names 'mysql'; headcount stores events in SQLite or", id="mysql"
        ),
        pytest.param(
            "not a url", r"cannot read store URL 'not a url': expected e\.g\.", id="garbage"
        ),
        pytest.param("", r"cannot read store URL ''", id="empty"),
    ],
)
async def test_open_refuses_a_bad_url(url: str, message: str) -> None:
    with pytest.raises(StoreError, match=message):
        await EventStore.open(url)


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A local TCP port that refuses connections: bound (so nobody else takes it), not
    listening."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


async def test_open_postgres_on_a_closed_port_raises_store_error(closed_port: int) -> None:
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{closed_port}/test"

    with pytest.raises(StoreError, match="cannot reach the event store") as raised:
        await EventStore.open(url)

    assert type(raised.value) is StoreError
    assert str(closed_port) in str(raised.value)
    assert isinstance(raised.value.__cause__, OSError)


async def test_count_seqs_counts_one_dpus_stored_seqs_in_a_closed_range(store: EventStore) -> None:
    await store.log.append(
        [Traversal("283", s, 1_000, 1) for s in (1, 2, 5, 9, 2**63 - 1)]
        + [Traversal("423", s, 1_000, 1) for s in (2, 3, 4)]
    )
    assert await store.log.count_seqs("283", 2, 9) == 3  # both ends included
    assert await store.log.count_seqs("283", 3, 4) == 0
    assert await store.log.count_seqs("283", 0, 2**63 - 1) == 5
    assert await store.log.count_seqs("423", 1, 9) == 3
    assert await store.log.count_seqs("777", 0, 2**63 - 1) == 0


# -- the whole log in fold order (scan_log) ------------------------------------------------


async def test_the_scan_reads_the_log_in_fold_order_up_to_the_head(store: EventStore) -> None:
    await store.log.append([ev("b", 1, 200), ev("a", 2, 200), ev("a", 1, 100, -1)])
    head = await store.log.head()
    await store.log.append([ev("c", 1, 50)])  # after the head: not read

    rows = [row async for batch in store.log.scan_log(after=None, head=head) for row in batch]
    assert rows == [("a", 1, 100, -1), ("a", 2, 200, 1), ("b", 1, 200, 1)]
    later = [row async for batch in store.log.scan_log(after=100, head=head) for row in batch]
    assert later == [("a", 2, 200, 1), ("b", 1, 200, 1)]


async def test_the_scan_reads_seq_only_where_asked(store: EventStore) -> None:
    await store.log.append([ev("a", 7, 100), ev("a", 8, 200), ev("b", 9, 300, -1)])
    head = await store.log.head()

    rows = [
        row
        async for batch in store.log.scan_log(after=None, head=head, seq_after=100)
        for row in batch
    ]
    assert rows == [("a", None, 100, 1), ("a", 8, 200, 1), ("b", 9, 300, -1)]
