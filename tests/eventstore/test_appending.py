"""The insert of an append: one statement per batch through the driver, on both backends, and
SQLite's one statement of new traversals that commits on its own. (What an append stores, its
duplicates, conflicts and late flags: test_store.py.)"""

from __future__ import annotations

import pytest
from sqlalchemy import select

from headcount.domain.events import Traversal
from headcount.errors import StoreDataError
from headcount.eventstore import appending
from headcount.eventstore.engine import read_transaction, write_transaction
from headcount.eventstore.schema import traversals
from headcount.eventstore.store import EventStore


def ev(dpu: str, seq: int, ts: int) -> Traversal:
    return Traversal(dpu, seq, ts, 1)


async def test_a_batch_longer_than_one_statement_is_stored_whole(store: EventStore) -> None:
    n = appending.SQLITE_ROWS * 2 + 7
    batch = [ev(f"d{i % 3}", i, 1_000 + i) for i in range(n)]
    result = await store.log.append(batch)
    assert len(result.new) == n
    assert sorted(result.positions) == list(result.positions)
    assert len(set(result.positions)) == n
    assert await store.log.count_traversals() == n


async def test_only_the_keys_inserted_now_come_back(store: EventStore) -> None:
    await store.log.append([ev("d", 1, 10), ev("d", 3, 30)])
    async with write_transaction(store.engine) as conn:
        inserted = await appending.insert_traversals(
            conn, [ev("d", 1, 10), ev("d", 2, 20), ev("d", 3, 30), ev("e", 1, 5)], 99
        )
    assert set(inserted) == {("d", 2), ("e", 1)}
    assert inserted[("d", 2)] != inserted[("e", 1)]


# -- SQLite's one statement of new traversals ----------------------------------------------


@pytest.fixture
def sqlite_store(store: EventStore) -> EventStore:
    if store.engine.dialect.name != "sqlite":
        pytest.skip("insert_new is SQLite's; PostgreSQL appends in a transaction")
    return store


async def test_new_traversals_go_in_in_their_order(sqlite_store: EventStore) -> None:
    """(Their ``late`` flags: test_store.py's late-flag tests, whose appends take this way on
    SQLite.)"""
    store = sqlite_store
    await store.log.append([ev("d", 1, 100)])
    batch = [ev("e", 9, 900), ev("d", 3, 500), ev("a", 2, 501), ev("d", 2, 499)]
    positions = await appending.insert_new(store.engine, batch, 77)
    assert positions is not None
    stored_at = await stored_positions(store)
    assert [stored_at[t.key] for t in batch] == list(positions)  # the batch's order
    assert positions[0] > stored_at[("d", 1)]
    assert {k: v for k, v in (await stored(store)).items() if k != ("d", 1)} == {
        t.key: (False, 77) for t in batch
    }


async def test_a_batch_with_a_key_stored_already_is_refused_whole(
    sqlite_store: EventStore,
) -> None:
    store = sqlite_store
    await store.log.append([ev("d", 2, 20)])
    assert await appending.insert_new(store.engine, [ev("d", 1, 10), ev("d", 2, 20)], 5) is None
    assert set(await stored(store)) == {("d", 2)}  # ("d", 1) waits for the usual way
    result = await store.log.append([ev("d", 1, 10), ev("d", 2, 20)])
    assert [t.key for t in result.new] == [("d", 1)]
    assert result.duplicates == 1


async def test_a_value_the_store_refuses_stores_nothing_of_the_batch(
    sqlite_store: EventStore,
) -> None:
    store = sqlite_store
    backwards = Traversal("d", 2, 20, 2)  # type: ignore[arg-type]  # the check refuses it
    with pytest.raises(StoreDataError):
        await appending.insert_new(store.engine, [ev("d", 1, 10), backwards], 5)
    with pytest.raises(StoreDataError):  # a string the driver cannot bind
        await appending.insert_new(store.engine, [ev("d", 1, 10), ev("\ud800", 2, 20)], 5)
    assert await stored(store) == {}


async def test_insert_new_takes_one_statement_of_rows(sqlite_store: EventStore) -> None:
    with pytest.raises(ValueError, match="1 to 2000"):
        await appending.insert_new(sqlite_store.engine, [], 5)
    too_many = [ev("d", i, i) for i in range(appending.SQLITE_ROWS + 1)]
    with pytest.raises(ValueError, match="1 to 2000"):
        await appending.insert_new(sqlite_store.engine, too_many, 5)


async def stored_positions(store: EventStore) -> dict[tuple[str, int], int]:
    async with read_transaction(store.engine) as conn:
        rows = await conn.execute(
            select(traversals.c.dpu_id, traversals.c.seq, traversals.c.position)
        )
        return {(dpu, seq): position for dpu, seq, position in rows}


async def stored(store: EventStore) -> dict[tuple[str, int], tuple[bool, int]]:
    """Each stored traversal's ``late`` flag and ``received_at``, by key."""
    async with read_transaction(store.engine) as conn:
        rows = await conn.execute(
            select(
                traversals.c.dpu_id, traversals.c.seq, traversals.c.late, traversals.c.received_at
            )
        )
        return {(dpu, seq): (bool(late), received) for dpu, seq, late, received in rows}
