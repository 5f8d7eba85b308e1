"""Schema versions: opening a store brings it to this release's schema, which is exactly
``schema.metadata``; a store that is not current is refused when upgrading is not allowed."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

from headcount.domain.events import Traversal
from headcount.errors import StoreError
from headcount.eventstore import migrate
from headcount.eventstore.schema import metadata
from headcount.eventstore.store import EventStore
from tests.store_readers import snapshots_before

TABLES = {
    "traversals",
    "resets",
    "snapshots",
    "quarantine",
    "topologies",
    "replays",
    "replayed_spaces",
}


async def table_names(store: EventStore) -> set[str]:
    async with store.engine.connect() as conn:
        return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))


async def test_open_brings_the_store_to_the_head_revision(store_url: str) -> None:
    async with await EventStore.open(store_url) as store:
        assert await migrate.current_revision(store.engine) == migrate.head_revision()
        assert await table_names(store) >= TABLES


async def test_opening_twice_is_harmless(store_url: str) -> None:
    event = Traversal("283", 1, 1_000, 1)
    async with await EventStore.open(store_url) as store:
        await store.log.append([event])

    async with await EventStore.open(store_url) as store:
        assert await migrate.current_revision(store.engine) == migrate.head_revision()
        assert await store.log.count_traversals() == 1
        assert (await store.log.append([event])).duplicates == 1

    async with await EventStore.open(store_url, upgrade=False) as store:
        assert await store.log.count_traversals() == 1


async def test_migrated_schema_matches_the_metadata(store: EventStore) -> None:
    def diff(conn: Connection) -> list[Any]:
        context = MigrationContext.configure(
            conn,
            opts={
                "compare_type": True,
                "compare_server_default": True,
                "include_object": migrate.include_object(conn.dialect.name),
            },
        )
        return list(compare_metadata(context, metadata))

    async with store.engine.connect() as conn:
        assert await conn.run_sync(diff) == []


async def test_open_without_upgrade_refuses_an_empty_store(store_url: str) -> None:
    with pytest.raises(StoreError, match=r"run 'headcount migrate --store URL'") as raised:
        await EventStore.open(store_url, upgrade=False)

    assert "schema is at version none" in str(raised.value)
    assert migrate.head_revision() in str(raised.value)
    # Refusing changed nothing: the store is still empty and can be migrated.
    async with await EventStore.open(store_url) as store:
        assert await migrate.current_revision(store.engine) == migrate.head_revision()


async def test_a_downgraded_store_is_upgraded_on_open(store_url: str) -> None:
    async with await EventStore.open(store_url) as store:
        await store.log.append([Traversal("283", 1, 1_000, 1)])
        async with store.engine.begin() as conn:
            await conn.run_sync(lambda c: command.downgrade(migrate.alembic_config(c), "base"))
        assert await migrate.current_revision(store.engine) is None
        assert not (await table_names(store)) & TABLES

    with pytest.raises(StoreError, match="headcount migrate"):
        await EventStore.open(store_url, upgrade=False)

    async with await EventStore.open(store_url) as store:
        assert await migrate.current_revision(store.engine) == migrate.head_revision()
        assert await table_names(store) >= TABLES
        assert await store.log.count_traversals() == 0
        assert (await store.log.append([Traversal("283", 1, 1_000, 1)])).positions != ()


async def test_sqlite_open_waits_for_another_writer(tmp_path: Path) -> None:
    """Another process creating the same store holds the write lock for a moment."""
    path = tmp_path / "store.db"
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("PRAGMA journal_mode=WAL")
    other.execute("BEGIN IMMEDIATE")
    other.execute("CREATE TABLE other_writer (x INTEGER)")
    release = asyncio.get_running_loop().call_later(0.3, other.execute, "COMMIT")
    try:
        async with await EventStore.open(f"sqlite+aiosqlite:///{path}") as store:
            assert await migrate.current_revision(store.engine) == migrate.head_revision()
            assert await table_names(store) >= {*TABLES, "other_writer"}
    finally:
        release.cancel()
        other.close()


async def test_two_new_stores_opened_at_once(tmp_path: Path) -> None:
    """Alembic's ``op`` and ``context`` are process-wide: migrations of two stores in one
    process must not run each other's operations."""
    for attempt in range(3):
        urls = [f"sqlite+aiosqlite:///{tmp_path / f'{attempt}-{i}.db'}" for i in range(3)]

        opened = await asyncio.gather(
            *(EventStore.open(url) for url in urls), return_exceptions=True
        )

        for store in opened:
            if isinstance(store, EventStore):
                await store.close()
        assert [type(s).__name__ for s in opened] == ["EventStore"] * 3, opened


async def test_one_new_store_opened_at_once_by_several_callers(store_url: str) -> None:
    opened = await asyncio.gather(*(EventStore.open(store_url) for _ in range(3)))

    try:
        revisions = [await migrate.current_revision(s.engine) for s in opened]
        assert revisions == [migrate.head_revision()] * 3
        await opened[0].log.append([Traversal("283", 1, 1_000, 1)])
        assert [await s.log.count_traversals() for s in opened] == [1, 1, 1]
    finally:
        for store in opened:
            await store.close()


async def test_snapshots_of_a_first_release_store_stay_usable(store_url: str) -> None:
    """0001 -> 0002: existing snapshots become generation 0, which no replay superseded."""
    async with await EventStore.open(store_url) as store, store.engine.begin() as conn:
        await conn.run_sync(lambda c: command.downgrade(migrate.alembic_config(c), "0001"))
        await conn.execute(
            text(
                "INSERT INTO snapshots (space_id, fingerprint, as_of, count, entrances,"
                " exits, position, reset_id, taken_at) VALUES ('A', 'f', 5, 2, 2, 0, 0, 0, 0)"
            )
        )

    async with await EventStore.open(store_url) as store:
        found = await snapshots_before(store, "A", "f", at_or_before=10, limit=5)
        assert [(s.as_of, s.state.count, s.generation) for s in found] == [(5, 2, 0)]
