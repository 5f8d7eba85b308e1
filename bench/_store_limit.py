"""The ingest benchmark's physical limit: the same traversal rows inserted into the same schema
through the bare drivers, in 2,000-row transactions, with the unique key's ``ON CONFLICT ...
DO NOTHING`` and ``RETURNING`` that an append of possible duplicates needs.

- SQLite: ``sqlite3`` on a WAL file with ``synchronous=FULL`` (durable at each commit, as the
  service's store is), one multi-row ``INSERT`` per transaction. Measured twice: with
  ``ON CONFLICT`` + ``RETURNING`` in ``BEGIN IMMEDIATE`` ... ``COMMIT``, and as a plain
  multi-row ``INSERT`` that is its own transaction with ``last_insert_rowid()`` after it (what
  headcount's append of new traversals does, ``appending.insert_new``). Both are printed,
  with headcount's ratio to each: the first is the limit the issue named, the plain
  ``INSERT`` (faster) the stricter one.
- PostgreSQL: asyncpg, ``INSERT ... SELECT FROM unnest(...)``; ``COPY`` as a second reference
  (it cannot skip duplicates, so headcount cannot use it as it is).

Each function returns rows per second over the whole run.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import asyncpg
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from headcount.eventstore.schema import TRAVERSAL_COLUMNS, traversal_conflict_target
from headcount.eventstore.store import EventStore

Row = tuple[str, int, int, int, int, bool]
TRANSACTION = 2_000
_COLUMNS = ", ".join(TRAVERSAL_COLUMNS)


def _key(dialect: str) -> str:
    """The store's own conflict target (PostgreSQL's partitioned table has ts in it)."""
    return ", ".join(traversal_conflict_target(dialect))


def publisher_rows(events: int, batch: int, dpus: int, first_ts: int) -> list[Row]:
    """The rows bench/_publisher.py's traversals become, in the order it sends them."""
    received = time.time_ns() // 1_000_000
    rows: list[Row] = []
    for n, start in enumerate(range(0, events, batch)):
        dpu_id = f"dpu{n % dpus}"
        rows += [
            (dpu_id, i, first_ts + i, 1, received, False)
            for i in range(start, min(start + batch, events))
        ]
    return rows


async def make_schema(url: str) -> None:
    """Create headcount's schema at ``url`` (an empty store), as the service would."""
    store = await EventStore.open(url)
    await store.close()


def _sqlite_insert(path: str, rows: Sequence[Row], *, returning: bool) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        statements: dict[int, str] = {}
        started = time.perf_counter()
        for first in range(0, len(rows), TRANSACTION):
            chunk = rows[first : first + TRANSACTION]
            sql = statements.get(len(chunk))
            if sql is None:
                values = ", ".join(["(?, ?, ?, ?, ?, ?)"] * len(chunk))
                sql = f"INSERT INTO traversals ({_COLUMNS}) VALUES {values}"
                if returning:
                    sql += (
                        f" ON CONFLICT ({_key('sqlite')}) DO NOTHING"
                        " RETURNING position, dpu_id, seq"
                    )
                statements[len(chunk)] = sql
            params = [v for row in chunk for v in row]
            if returning:
                conn.execute("BEGIN IMMEDIATE")
                returned = conn.execute(sql, params).fetchall()
                conn.execute("COMMIT")
                assert len(returned) == len(chunk)
            else:
                conn.execute(sql, params)  # a transaction of its own
                (last,) = conn.execute("SELECT last_insert_rowid()").fetchone()
                assert last >= len(chunk)
        return len(rows) / (time.perf_counter() - started)
    finally:
        conn.close()


async def sqlite_limit(path: str, rows: Sequence[Row]) -> tuple[float, float]:
    """Rows/s of bare ``sqlite3`` into new stores at ``path`` (and ``path`` + ``-plain``):
    ``ON CONFLICT`` + ``RETURNING`` in a transaction, then a plain ``INSERT``."""
    await make_schema(f"sqlite+aiosqlite:///{path}")
    returning = await asyncio.to_thread(_sqlite_insert, path, rows, returning=True)
    plain_path = f"{path}-plain"
    await make_schema(f"sqlite+aiosqlite:///{plain_path}")
    plain = await asyncio.to_thread(_sqlite_insert, plain_path, rows, returning=False)
    return returning, plain


_UNNEST = (
    f"INSERT INTO traversals ({_COLUMNS})"
    " SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::smallint[],"
    " $5::bigint[], $6::boolean[])"
    f" ON CONFLICT ({_key('postgresql')}) DO NOTHING RETURNING position, dpu_id, seq"
)


async def postgres_limit(url: str, rows: Sequence[Row]) -> tuple[float, float]:
    """Rows/s of bare asyncpg into the new store at ``url``: ``unnest`` + ``RETURNING``, then
    (the table emptied) ``COPY``."""
    await make_schema(url)
    conn = await asyncpg.connect(make_url(url).set(drivername="postgresql").render_as_string(False))
    try:
        started = time.perf_counter()
        for first in range(0, len(rows), TRANSACTION):
            chunk = rows[first : first + TRANSACTION]
            async with conn.transaction():
                returned = await conn.fetch(_UNNEST, *(list(c) for c in zip(*chunk, strict=True)))
            assert len(returned) == len(chunk)
        unnest = len(rows) / (time.perf_counter() - started)
        # The keys too: the store's trigger skips a row whose key it has seen.
        await conn.execute("TRUNCATE traversals, traversal_keys")
        started = time.perf_counter()
        for first in range(0, len(rows), TRANSACTION):
            async with conn.transaction():
                await conn.copy_records_to_table(
                    "traversals",
                    records=rows[first : first + TRANSACTION],
                    columns=list(TRAVERSAL_COLUMNS),
                )
        copy = len(rows) / (time.perf_counter() - started)
        return unnest, copy
    finally:
        await conn.close()


@asynccontextmanager
async def fresh_database(admin_url: str, name: str) -> AsyncIterator[str]:
    """A new, empty PostgreSQL database ``name`` on the server of ``admin_url``, dropped on
    leaving; its SQLAlchemy URL."""
    admin = make_url(admin_url)
    engine = create_async_engine(admin, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield admin.set(database=name).render_as_string(hide_password=False)
        finally:
            async with engine.connect() as conn:
                await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        await engine.dispose()
