"""Long ordered reads of a SQLite store through the bare driver: one thread hop per batch of
rows instead of SQLAlchemy's rows and a hop per partition, and the next batch read while the
caller folds this one (the driver lets go of the GIL while SQLite steps). A command with
nothing else on its event loop reads on the loop's own thread instead: the worker and the
loop take turns with the GIL more than they overlap, and the hand-overs cost a replay of 1M
events about 8% (``on_loop``)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncGenerator, Generator, Sequence
from typing import Any
from urllib.parse import quote

from sqlalchemy.ext.asyncio import AsyncEngine

from headcount.errors import StoreError

__all__ = ["sqlite_file", "sqlite_rows"]

#: Seconds a read waits for a lock (as the engine's connections do).
_BUSY_TIMEOUT = 30


def sqlite_file(engine: AsyncEngine) -> str | None:
    """The file of a SQLite store, ``None`` for PostgreSQL or an in-memory database."""
    database = engine.url.database
    if engine.dialect.name != "sqlite" or database in (None, "", ":memory:"):
        return None
    return database


async def sqlite_rows(
    path: str, sql: str, params: Sequence[Any], *, batch: int, on_loop: bool = False
) -> AsyncGenerator[list[tuple[Any, ...]], None]:
    """The rows of one read-only statement on the SQLite file at ``path``, in batches of up to
    ``batch``. One statement reads one consistent state of the file however long it runs.
    ``on_loop``: read on the caller's thread, holding the event loop while SQLite sorts and
    reads each batch (for a command with nothing else to serve, never a service)."""
    if on_loop:
        with contextlib.closing(_rows_on_loop(path, sql, params, batch)) as batches:
            for rows in batches:
                yield rows
        return
    try:
        conn = await asyncio.to_thread(_open, path)
    except sqlite3.Error as e:
        raise StoreError(f"cannot open the event store {path!r}: {e}") from e
    pending: asyncio.Future[list[tuple[Any, ...]]] | None = None
    try:
        cursor = await asyncio.to_thread(conn.execute, sql, params)
        pending = asyncio.ensure_future(asyncio.to_thread(cursor.fetchmany, batch))
        while True:
            rows = await pending
            if not rows:
                break
            pending = asyncio.ensure_future(asyncio.to_thread(cursor.fetchmany, batch))
            yield rows
    except sqlite3.Error as e:
        raise StoreError(f"the event store failed: {e}") from e
    finally:
        if pending is not None and not pending.done():
            # The worker cannot be interrupted: let it finish before closing its connection.
            await asyncio.gather(pending, return_exceptions=True)
        await asyncio.to_thread(conn.close)


def _rows_on_loop(
    path: str, sql: str, params: Sequence[Any], batch: int
) -> Generator[list[tuple[Any, ...]], None, None]:
    """:func:`sqlite_rows` read on the caller's thread."""
    try:
        conn = _open(path)
    except sqlite3.Error as e:
        raise StoreError(f"cannot open the event store {path!r}: {e}") from e
    try:
        cursor = conn.execute(sql, params)
        while rows := cursor.fetchmany(batch):
            yield rows
    except sqlite3.Error as e:
        raise StoreError(f"the event store failed: {e}") from e
    finally:
        conn.close()


def _open(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(
        f"file:{quote(path)}?mode=rw",
        uri=True,
        timeout=_BUSY_TIMEOUT,
        isolation_level=None,
        check_same_thread=False,  # used by one worker thread at a time, in turn
    )
    conn.execute("PRAGMA query_only = ON")
    return conn
