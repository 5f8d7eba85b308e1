"""Opening a store URL: what the engine does with its connections beyond SQLAlchemy's defaults."""

from __future__ import annotations

import pytest

from headcount.domain.events import Traversal
from headcount.eventstore.store import EventStore


async def test_a_sqlite_connection_returned_in_a_transaction_is_rolled_back(
    store: EventStore,
) -> None:
    """The pool skips the rollback of a connection outside any transaction (a round trip to
    the driver's thread on every check-in), but one returned in the middle of a transaction
    must not keep it, nor the write lock, for the next user."""
    if store.engine.dialect.name != "sqlite":
        pytest.skip("the check-in without a rollback is SQLite's; PostgreSQL keeps the default")
    async with store.engine.connect() as conn:
        raw = (await conn.get_raw_connection()).driver_connection
        assert raw is not None
        await raw.execute("BEGIN IMMEDIATE")  # behind SQLAlchemy's back, never ended
        await raw.execute(
            "INSERT INTO traversals (dpu_id, seq, ts, direction, received_at, late)"
            " VALUES ('d', 1, 1, 1, 1, false)"
        )
        assert raw.in_transaction
    for _ in range(3):  # whichever pooled connection comes next
        async with store.engine.connect() as conn:
            raw = (await conn.get_raw_connection()).driver_connection
            assert raw is not None
            assert not raw.in_transaction
    result = await store.log.append([Traversal("d", 1, 1, 1)])  # the lock was let go
    assert [t.key for t in result.new] == [("d", 1)]  # and the uncommitted row is gone
