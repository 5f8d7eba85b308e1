"""Long reads through the bare SQLite driver: batches in order, errors as store errors, and a
reader that stops early leaves nothing behind."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncGenerator
from pathlib import Path

import pytest

from headcount.errors import StoreError
from headcount.eventstore.scan import sqlite_file, sqlite_rows
from headcount.eventstore.store import EventStore


def numbers(path: Path, n: int) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE numbers (n INTEGER)")
    conn.executemany("INSERT INTO numbers VALUES (?)", [(i,) for i in range(n)])
    conn.commit()
    conn.close()


#: Both ways of reading: in a worker thread, and on the event loop's own thread.
ON_LOOP = pytest.mark.parametrize("on_loop", [False, True], ids=["worker", "on-loop"])


@ON_LOOP
async def test_rows_come_in_batches_in_order(tmp_path: Path, on_loop: bool) -> None:
    numbers(tmp_path / "n.db", 25)
    batches = [
        batch
        async for batch in sqlite_rows(
            str(tmp_path / "n.db"),
            "SELECT n FROM numbers WHERE n >= ? ORDER BY n",
            [3],
            batch=10,
            on_loop=on_loop,
        )
    ]
    assert [len(b) for b in batches] == [10, 10, 2]
    assert [n for b in batches for (n,) in b] == list(range(3, 25))


@ON_LOOP
async def test_a_reader_that_stops_early_closes_the_connection(
    tmp_path: Path, on_loop: bool
) -> None:
    numbers(tmp_path / "n.db", 100)
    rows = sqlite_rows(
        str(tmp_path / "n.db"), "SELECT n FROM numbers", [], batch=10, on_loop=on_loop
    )
    assert isinstance(rows, AsyncGenerator)
    async for _ in rows:
        break
    await rows.aclose()
    # Nothing holds the file: a writer takes the exclusive lock at once.
    conn = sqlite3.connect(tmp_path / "n.db", timeout=0)
    conn.execute("BEGIN EXCLUSIVE")
    conn.rollback()
    conn.close()


@ON_LOOP
async def test_errors_are_store_errors(tmp_path: Path, on_loop: bool) -> None:
    with pytest.raises(StoreError, match="cannot open the event store"):
        async for _ in sqlite_rows(
            str(tmp_path / "missing.db"), "SELECT 1", [], batch=10, on_loop=on_loop
        ):
            pass
    numbers(tmp_path / "n.db", 1)
    with pytest.raises(StoreError, match="no such table"):
        async for _ in sqlite_rows(
            str(tmp_path / "n.db"), "SELECT * FROM nope", [], batch=10, on_loop=on_loop
        ):
            pass


async def test_only_a_sqlite_file_is_read_this_way(store_url: str, tmp_path: Path) -> None:
    async with await EventStore.open(store_url) as store:
        found = sqlite_file(store.engine)
    assert found == (str(tmp_path / "store.db") if store_url.startswith("sqlite") else None)


async def test_a_file_name_that_means_something_in_a_uri_is_read(tmp_path: Path) -> None:
    path = tmp_path / "odd name ?#%.db"
    numbers(path, 3)
    found = [
        row
        async for batch in sqlite_rows(str(path), "SELECT n FROM numbers", [], batch=2)
        for row in batch
    ]
    assert found == [(0,), (1,), (2,)]
