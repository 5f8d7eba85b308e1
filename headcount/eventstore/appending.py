"""The insert of an append: a batch of traversals to the driver in one statement, as tuples.

SQLAlchemy's ``insertmanyvalues`` builds a dict, processes each parameter and a row object per
traversal; here the statement text is cached per backend (and, on SQLite, per row count) and
the values go to the driver as they are: on SQLite one multi-row ``VALUES``, on PostgreSQL
one ``unnest`` of an array per column (one statement whatever the batch's size, prepared
once per connection). Both go through the transaction's SQLAlchemy connection
(``exec_driver_sql``), so the write stays ordered against the store's other writers and its
errors are translated like any other (``engine.write_transaction``).

On SQLite, a batch of new traversals (the usual case) first takes a shorter way,
:func:`insert_new`: one statement that is its own transaction, sent to the driver in one
call (aiosqlite's ``execute_insert``, which also reads the last position). Through
SQLAlchemy, the same append is a dozen round trips to aiosqlite's thread (checkout,
``BEGIN IMMEDIATE``, a query for the newest snapshot, a cursor made, executed, fetched and
closed, ``COMMIT``), each of which waits for the event loop; the one call takes ingest from
about 130,000 to 210,000 events/s (BENCHMARKS.md, "Ingest in one call"). A single statement
is atomic and durable on its own, and takes SQLite's write lock like any writer, so nothing
is lost: it either stores the whole batch or nothing, and a batch with a key already stored
is refused whole, to go the usual way.

The conflict target and the columns are ``schema.traversal_conflict_target`` and
``schema.TRAVERSAL_COLUMNS``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from headcount.domain.events import Traversal
from headcount.eventstore.engine import driver_connection
from headcount.eventstore.schema import TRAVERSAL_COLUMNS, traversal_conflict_target

__all__ = ["insert_new", "insert_traversals"]

#: Rows per statement on SQLite: six parameters a row, within SQLite's 32,766.
SQLITE_ROWS = 2_000
_COLUMNS = ", ".join(TRAVERSAL_COLUMNS)


def _conflict(dialect: str) -> str:
    return f"ON CONFLICT ({', '.join(traversal_conflict_target(dialect))}) DO NOTHING"


_RETURNING = "RETURNING position, dpu_id, seq"
_NEWEST_SNAPSHOT = "SELECT max(as_of) FROM snapshots"
#: ``late`` is decided in the statement, from the newest snapshot it sees (PostgreSQL reads
#: it after the transaction took the log lock: no snapshot can commit in between).
_POSTGRES = (
    f"INSERT INTO traversals ({_COLUMNS})"
    " SELECT u.dpu_id, u.seq, u.ts, u.direction, $5,"
    " COALESCE(u.ts <= (SELECT max(as_of) FROM snapshots), false)"
    " FROM unnest($1::varchar[], $2::bigint[], $3::bigint[], $4::smallint[])"
    " AS u(dpu_id, seq, ts, direction)"
    f" {_conflict('postgresql')} {_RETURNING}"
)


@lru_cache(maxsize=64)
def _sqlite_insert(rows: int) -> str:
    values = ", ".join(["(?, ?, ?, ?, ?, ?)"] * rows)
    return f"INSERT INTO traversals ({_COLUMNS}) VALUES {values} {_conflict('sqlite')} {_RETURNING}"


@lru_cache(maxsize=64)
def _sqlite_insert_new(rows: int) -> str:
    """Rows numbered in the text (``n``, not a parameter) so that they are inserted in the
    batch's order; ``late`` decided in the statement from the newest snapshot, as on
    PostgreSQL; ``received_at`` one parameter for all. No ``RETURNING``: the statement stores
    every row or none, each taking the position after the one before (the newest position
    plus one: it holds the write lock), so the last position tells them all, and fetching
    2,000 returned rows would take the driver's thread 2,000 turns of the GIL."""
    values = ", ".join(f"({n}, ?, ?, ?, ?)" for n in range(rows))
    return (
        f"WITH batch(n, dpu_id, seq, ts, direction) AS (VALUES {values})"
        f" INSERT INTO traversals ({_COLUMNS})"
        f" SELECT dpu_id, seq, ts, direction, ?{rows * 4 + 1},"
        " coalesce(ts <= (SELECT max(as_of) FROM snapshots), false)"
        " FROM batch ORDER BY n"
    )


async def insert_new(
    engine: AsyncEngine, batch: Sequence[Traversal], received_at: int
) -> range | None:
    """Insert ``batch`` (distinct keys, at most :data:`SQLITE_ROWS`) into a SQLite store in
    one statement that commits on its own, in its order; the log positions they took, in the
    batch's order. If any key is stored already, nothing is inserted and ``None`` comes back:
    the caller then appends in a transaction that sorts duplicates from conflicts."""
    if not 0 < len(batch) <= SQLITE_ROWS:
        raise ValueError(f"insert_new takes 1 to {SQLITE_ROWS} traversals, not {len(batch)}")
    params: list[object] = []
    for t in batch:
        params += (t.dpu_id, t.seq, t.ts, t.direction)
    params.append(received_at)
    async with driver_connection(engine) as conn:
        try:
            (last,) = await conn.execute_insert(_sqlite_insert_new(len(batch)), params)
        except sqlite3.IntegrityError as e:
            if e.sqlite_errorname in ("SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY"):
                return None  # a key stored already (not a check refused)
            raise
    return range(last - len(batch) + 1, last + 1)


async def insert_traversals(
    conn: AsyncConnection, batch: Sequence[Traversal], received_at: int
) -> dict[tuple[str, int], int]:
    """Insert ``batch`` (distinct keys) in ``conn``'s write transaction, in its order,
    skipping keys already stored; the log position of each key inserted now. A traversal is
    ``late`` when its ``ts`` is at or before the newest snapshot stored."""
    if not batch:
        return {}
    if conn.dialect.name == "postgresql":
        dpu_ids = [t.dpu_id for t in batch]
        seqs = [t.seq for t in batch]
        times = [t.ts for t in batch]
        directions = [t.direction for t in batch]
        result = await conn.exec_driver_sql(
            _POSTGRES, (dpu_ids, seqs, times, directions, received_at)
        )
        returned: Sequence[Sequence[Any]] = result.all()
        return {(row[1], row[2]): row[0] for row in returned}
    newest = (await conn.exec_driver_sql(_NEWEST_SNAPSHOT)).scalar()
    inserted: dict[tuple[str, int], int] = {}
    for start in range(0, len(batch), SQLITE_ROWS):
        chunk = batch[start : start + SQLITE_ROWS]
        params: list[object] = []
        if newest is None:
            for t in chunk:
                params += (t.dpu_id, t.seq, t.ts, t.direction, received_at, False)
        else:
            for t in chunk:
                params += (t.dpu_id, t.seq, t.ts, t.direction, received_at, t.ts <= newest)
        result = await conn.exec_driver_sql(_sqlite_insert(len(chunk)), tuple(params))
        rows: Sequence[Sequence[Any]] = result.all()
        for row in rows:
            inserted[(row[1], row[2])] = row[0]
    return inserted
