"""The insert of an append: one statement per batch through the driver, on both backends.
(What an append stores, its duplicates, conflicts and late flags: test_store.py.)"""

from __future__ import annotations

from headcount.domain.events import Traversal
from headcount.eventstore import appending
from headcount.eventstore.engine import write_transaction
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
