"""Past answers in one statement: a space's newest snapshot under a topology, whether it may
be used, and every event after it up to the time asked about, read in one round trip through
the driver itself (no SQLAlchemy compilation, no pool pre-ping, no BEGIN/COMMIT, and on SQLite
no thread hop: the statement is bounded by an index and a page, so it runs on the caller's
thread).

This is only a fast path. Whenever it cannot answer (no snapshot, a newest snapshot that may
not be used, a tail longer than a page, a busy or unreachable store, an in-memory database) it
returns ``None`` and the caller takes the general path (``Snapshots.newest_usable`` and
``EventLog.space_log``), which decides the same things row by row and reports errors. The
usability checks in the statement are those of ``snapshots.still_right`` and
``snapshots.SUPERSEDED``, written in SQL; the tests compare the two paths.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import quote

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from headcount.domain.fold import SpaceState
from headcount.domain.rollups import MAX_STRETCH_MS
from headcount.domain.topology import Source
from headcount.errors import StoreError
from headcount.eventstore.statements import TAIL_PAGE

__all__ = [
    "KIND",
    "LATE",
    "REPLAYED",
    "RESET",
    "ROLLUP",
    "STORED_RESET",
    "TRAVERSAL",
    "Answers",
    "SnapshotTail",
    "SnapshotWindow",
    "snapshot_tail_sql",
]

log = logging.getLogger(__name__)

#: Kinds of the tail's rows.
RESET = 2
TRAVERSAL = 3
#: Kinds of the snapshot's rows, in the order they come.
_ENTRANCES = -2
_EXITS = -1
_USABLE = 0
_UNUSABLE = 1
#: Of each source: whether its ``valid_until`` is set, and its placement.
_Shape = tuple[tuple[bool, int], ...]
#: Connections kept for fast reads on PostgreSQL (more readers at once wait for one).
_PG_CONNECTIONS = 4
#: Rows per batch of a series' window.
_WINDOW_BATCH = 5_000
#: Rows of a series' window on PostgreSQL read in one statement, without a cursor: a day.
_PG_ONE_TRIP = 50_000
#: Rollups of a window this long or shorter are read on SQLite on the caller's thread (a
#: few hundred rows, a fraction of a millisecond); longer ones in a worker thread.
_ON_THE_LOOP_MS = 2 * 86_400_000


@dataclass(frozen=True, slots=True)
class SnapshotWindow:
    """A series' read: the newest usable snapshot's state before the window, then batches of
    rows ``(kind, ts, value)`` as in :class:`SnapshotTail`, from it to the window's end."""

    state: SpaceState
    batches: AsyncIterator[Sequence[Sequence[int]]]


@dataclass(frozen=True, slots=True)
class SnapshotTail:
    """The newest usable snapshot's state and the events after it, in fold order: rows
    ``(kind, ts, value)``, ``kind`` :data:`RESET` (``value`` the count set) or
    :data:`TRAVERSAL` (``value`` the delta to the space, +1 or -1)."""

    state: SpaceState
    rows: Sequence[Sequence[int]]


def _source_terms(shape: _Shape, bounds: str) -> list[str]:
    """``t.dpu_id = ? AND bounds [AND t.ts < ?]`` for each source (``shape``: whether its
    ``valid_until`` is set, and its placement), numbering parameters from 4 as
    :func:`_source_params` does; ``{start}`` in ``bounds`` is the source's parameter for
    ``valid_from - 1``."""
    terms = []
    n = 4
    for bounded, _ in shape:
        term = f"t.dpu_id = {{{n}}} AND " + bounds.replace("{start}", f"{{{n + 1}}}")
        n += 2
        if bounded:
            term += f" AND t.ts < {{{n}}}"
            n += 1
        terms.append(f"({term})")
    return terms


@lru_cache(maxsize=1024)
def snapshot_tail_sql(shape: _Shape, backend: str, *, window: bool = False) -> str:
    """The statement for sources of ``shape`` (for each: whether its ``valid_until`` is set,
    its placement) on ``backend`` (``sqlite``: parameters ``?n`` for sqlite3, else ``$n`` for
    asyncpg), with parameters in the order of :func:`_source_params`. With ``window`` (a
    series, ``Answers.snapshot_window``): the snapshot as below, but the rows after it up to
    (not including) one more parameter, the window's end, and as many rows as the last
    parameter (none: ``-1`` on SQLite, ``NULL`` on PostgreSQL).

    Rows ``(kind, ts, value)``: the newest snapshot of the space under the fingerprint at or
    before the time that no finished replay superseded, as three rows (its entrances, its exits,
    then its count, of kind :data:`_USABLE` when it may be used, :data:`_UNUSABLE` when a late
    traversal or a reset stored after it belongs before it), then, only when it may be used,
    the resets (``value`` the count) and traversals (``value`` the delta to the space) after it
    up to the time, in fold order; at most a page and four rows."""
    late = " OR ".join(_source_terms(shape, "t.ts > {start} AND t.ts <= snap.as_of"))
    # SQLite ranges an index by one lower bound of a column, perhaps the wrong one: give it
    # one (its max() of a null is null: no tail without a usable snapshot). PostgreSQL takes
    # the greater of two bounds when the scan starts.
    after = (
        "t.ts > max((SELECT as_of FROM base), {start})"
        if backend == "sqlite"
        else "t.ts > (SELECT as_of FROM base) AND t.ts > {start}"
    )
    until = f"< {{{_param_count(shape) + 1}}}" if window else "<= {3}"
    terms = _source_terms(shape, after + f" AND t.ts {until}")
    # A traversal comes through one source only (a DPU's assignments do not overlap and a
    # doorway links a space once), with its delta to the space (``domain.events.space_delta``:
    # the direction, turned round where the DPU hangs outside).
    deltas = ["-t.direction" if placement < 0 else "t.direction" for _, placement in shape]
    if backend == "sqlite" and window:
        # A window is read in a worker thread, in batches: each source's index range, one sort.
        tail = "".join(
            f"""  UNION ALL
  SELECT {TRAVERSAL}, t.ts, t.dpu_id, t.seq, {delta} FROM traversals t WHERE {term}
"""
            for delta, term in zip(deltas, terms, strict=True)
        )
    elif backend == "sqlite":
        # The statement runs on the caller's thread: each source's events by its own index
        # range in time order, at most a page and one, so the work stays bounded however far
        # behind the snapshot is (a longer tail answers None).
        tail = "".join(
            f"""  UNION ALL
  SELECT * FROM (SELECT {TRAVERSAL} AS kind, t.ts, t.dpu_id, t.seq, {delta} AS value
    FROM traversals t WHERE {term} ORDER BY t.ts LIMIT {TAIL_PAGE + 1}) AS source{i}
"""
            for i, (delta, term) in enumerate(zip(deltas, terms, strict=True))
        )
    else:
        # On the server, one bitmap scan of the sources' ranges is about twice as fast.
        outside = [term for (_, placement), term in zip(shape, terms, strict=True) if placement < 0]
        signed = (
            f"CASE WHEN {' OR '.join(outside)} THEN -t.direction ELSE t.direction END"
            if outside
            else "t.direction"
        )
        tail = f"""  UNION ALL
  SELECT {TRAVERSAL}, t.ts, t.dpu_id, t.seq, {signed}
    FROM traversals t WHERE {" OR ".join(terms)}
"""
    sql = f"""
WITH snap AS (
  SELECT s.as_of, s.count, s.entrances, s.exits, s.position, s.reset_id FROM snapshots s
  WHERE s.space_id = {{1}} AND s.fingerprint = {{2}} AND s.as_of <= {{3}}
    AND NOT EXISTS (SELECT 1 FROM replayed_spaces r WHERE r.space_id = s.space_id
      AND r.replay_id > s.generation AND (r.from_ts IS NULL OR r.from_ts <= s.as_of))
  ORDER BY s.as_of DESC LIMIT 1
), base AS (
  SELECT snap.as_of FROM snap
  WHERE NOT EXISTS (SELECT 1 FROM traversals t
      WHERE late = true AND t.position > snap.position AND ({late}))
    AND NOT EXISTS (SELECT 1 FROM resets r WHERE r.space_id = {{1}}
      AND r.ts <= snap.as_of AND r.id > snap.reset_id)
)
SELECT kind, ts, value FROM (
  SELECT {_ENTRANCES} AS kind, snap.as_of AS ts, CAST(NULL AS TEXT) AS dpu_id,
    CAST(NULL AS BIGINT) AS seq, snap.entrances AS value FROM snap
  UNION ALL
  SELECT {_EXITS}, snap.as_of, NULL, NULL, snap.exits FROM snap
  UNION ALL
  SELECT CASE WHEN EXISTS (SELECT 1 FROM base) THEN {_USABLE} ELSE {_UNUSABLE} END,
    snap.as_of, NULL, NULL, snap.count FROM snap
  UNION ALL
  SELECT {RESET}, r.ts, NULL, NULL, r.count FROM resets r
    WHERE r.space_id = {{1}} AND r.ts > (SELECT as_of FROM base) AND r.ts {until}
{tail}
) AS answer
ORDER BY ts, kind, dpu_id, seq
LIMIT {f"{{{_param_count(shape) + 2}}}" if window else TAIL_PAGE + 4}
"""
    placeholder = "?{}" if backend == "sqlite" else "${}"
    return sql.format(*(placeholder.format(n) for n in range(_param_count(shape) + 3)))


#: Kinds of the rows of :func:`rollups_sql`.
ROLLUP = 0
LATE = 1
STORED_RESET = 2
REPLAYED = 3
#: Where a row of :func:`rollups_sql` has its kind (after a rollup's fields).
KIND = 13


@lru_cache(maxsize=1024)
def rollups_sql(shape: _Shape, backend: str) -> str:
    """A series' read of rollups (``eventstore.rollups``) for sources of ``shape``, with
    parameters as :func:`snapshot_tail_sql`'s window (the space, the fingerprint, the window's
    start, the sources, its end, a limit). Rows in no order, their kind at :data:`KIND`: each
    rollup of the space under the fingerprint that meets the window (:data:`ROLLUP`: its
    fields as ``Rollup``'s, then after the kind its position, reset id, id and generation);
    each late traversal through the sources in the window (:data:`LATE`: its time and
    position first); each reset of the space in the window (:data:`STORED_RESET`: its time
    and id); each finished replay of the space (:data:`REPLAYED`: where it began folding, its
    generation). A rollup is usable unless a late traversal or a reset in its time was stored
    after it or a replay superseded it (``rollups.SUPERSEDED_ROLLUP``): that is the caller's
    to decide, with a comparison per rollup where a condition per row in the statement would
    cost as much as reading it."""
    end = _param_count(shape) + 1
    late = " OR ".join(
        _source_terms(shape, f"t.ts > {{start}} AND t.ts >= {{3}} AND t.ts < {{{end}}}")
    )
    nulls, tail = ", ".join(["NULL"] * 11), "NULL, NULL, NULL, NULL"
    sql = f"""
SELECT r.bucket_start, r.bucket_end, r.events, r.entrances, r.exits, r.shift, r.rise, r.dip,
  r.floor_end, r.floor_high, r.reset_end, r.reset_low, r.reset_high,
  {ROLLUP}, r.position, r.reset_id, r.id, r.generation
FROM rollups r
WHERE r.space_id = {{1}} AND r.fingerprint = {{2}} AND r.bucket_start < {{{end}}}
  AND r.bucket_start > CAST({{3}} AS BIGINT) - {MAX_STRETCH_MS} AND r.bucket_end > {{3}}
UNION ALL
SELECT t.ts, t.position, {nulls}, {LATE}, {tail} FROM traversals t
  WHERE t.late = true AND ({late})
UNION ALL
SELECT x.ts, x.id, {nulls}, {STORED_RESET}, {tail} FROM resets x
  WHERE x.space_id = {{1}} AND x.ts >= {{3}} AND x.ts < {{{end}}}
UNION ALL
SELECT x.from_ts, x.replay_id, {nulls}, {REPLAYED}, {tail} FROM replayed_spaces x
  WHERE x.space_id = {{1}}
LIMIT {{{end + 1}}}
"""
    placeholder = "?{}" if backend == "sqlite" else "${}"
    return sql.format(*(placeholder.format(n) for n in range(end + 2)))


def _param_count(shape: _Shape) -> int:
    return 3 + sum(3 if bounded else 2 for bounded, _ in shape)


def _source_params(sources: Sequence[Source]) -> list[Any]:
    """The parameters from 4 on (after the space, the fingerprint and the time); placeholder
    ``n`` binds the ``n``-th parameter on both drivers."""
    params: list[Any] = []
    for s in sources:
        params += [s.dpu_id, s.valid_from - 1]
        if s.valid_until is not None:
            params.append(s.valid_until)
    return params


def _tail(rows: Sequence[Sequence[Any]]) -> SnapshotTail | None:
    if len(rows) < 3 or rows[2][0] != _USABLE or len(rows) > TAIL_PAGE + 3:
        return None  # no snapshot, not usable, or a tail longer than a page
    (_, as_of, entrances), (_, _, exits), (_, _, count) = rows[:3]
    return SnapshotTail(SpaceState(as_of, count, entrances, exits), rows[3:])


class Answers:
    """A store's one-statement reads (``EventStore.answers``). Connections of its own, opened
    when first used; :meth:`close` closes them."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        url = engine.url
        self._sqlite_path: str | None = None
        if engine.dialect.name == "sqlite" and url.database not in (None, "", ":memory:"):
            self._sqlite_path = url.database
        self._sqlite: sqlite3.Connection | None = None
        self._pg_args: dict[str, Any] | None = None
        if engine.dialect.name == "postgresql":
            self._pg_args = {**url.translate_connect_args(username="user"), **url.query}
        self._pg_idle: list[asyncpg.Connection] = []
        self._pg_slots = asyncio.Semaphore(_PG_CONNECTIONS)
        self._closed = False
        #: The connection kept for series' windows on SQLite, and who is using it.
        self._sqlite_window: sqlite3.Connection | None = None
        self._window_lock = asyncio.Lock()
        #: Per (space, fingerprint): its sources, its statement, their parameters.
        self._statements: dict[tuple[str, str], tuple[tuple[Source, ...], str, list[Any]]] = {}

    async def snapshot_tail(
        self, space_id: str, fingerprint: str, sources: Sequence[Source], *, until: int
    ) -> SnapshotTail | None:
        """The newest usable snapshot of the space at or before ``until`` under
        ``fingerprint`` and the events through ``sources`` after it up to ``until``, in one
        statement; ``None`` when the general path must answer (see the module's text)."""
        if not sources or self._closed or (self._sqlite_path is None and self._pg_args is None):
            return None
        key = (space_id, fingerprint)
        known = self._statements.get(key)
        if known is None or known[0] != sources:
            shape = tuple((s.valid_until is not None, s.sensor_placement) for s in sources)
            sql = snapshot_tail_sql(shape, self.engine.dialect.name)
            known = self._statements[key] = (tuple(sources), sql, _source_params(sources))
        _, sql, source_params = known
        params = [space_id, fingerprint, until, *source_params]
        if self._sqlite_path is not None:
            return self._sqlite_tail(sql, params)
        if self._pg_args is not None:
            return await self._pg_tail(sql, params)
        return None

    def _sqlite_tail(self, sql: str, params: list[Any]) -> SnapshotTail | None:
        rows = self._sqlite_all(sql, params)
        return None if rows is None else _tail(rows)

    def _sqlite_all(self, sql: str, params: list[Any]) -> list[Any] | None:
        """The rows of a bounded statement, on the caller's thread; ``None`` if it fails."""
        try:
            if self._sqlite is None:
                self._sqlite = _open_sqlite(self._sqlite_path or "")
            return self._sqlite.execute(sql, params).fetchall()
        except sqlite3.Error as e:  # busy, or a file that is not (yet) a store: the slow path
            log.debug("one-statement read on SQLite not taken: %s", e)
            return None

    async def _pg_tail(self, sql: str, params: list[Any]) -> SnapshotTail | None:
        async with self._pg_slots:
            conn = self._pg_idle.pop() if self._pg_idle else None
            try:
                if conn is None:
                    conn = await asyncpg.connect(**(self._pg_args or {}))
                rows = await conn.fetch(sql, *params)
            except Exception as e:  # whatever failed, the general path answers or reports it
                log.debug("one-statement answer on PostgreSQL not taken: %s", e)
                if conn is not None:
                    conn.terminate()
                return None
            except BaseException:  # cancelled mid-statement: the connection's state is unknown
                if conn is not None:
                    conn.terminate()
                raise
            if self._closed:
                await conn.close()
            else:
                self._pg_idle.append(conn)
            return _tail(rows)

    @asynccontextmanager
    async def snapshot_window(
        self,
        space_id: str,
        fingerprint: str,
        sources: Sequence[Source],
        *,
        before: int,
        end: int,
    ) -> AsyncIterator[SnapshotWindow | None]:
        """The newest usable snapshot of the space before ``before`` under ``fingerprint``,
        and the events through ``sources`` after it up to ``end`` (exclusive), in fold order,
        in one statement streamed in batches (a series: however many rows its window holds;
        on SQLite in a worker thread). ``None`` when the general path must answer: no
        snapshot, one that may not be used, or a store that fails before the first row."""
        if not sources or self._closed or (self._sqlite_path is None and self._pg_args is None):
            yield None
            return
        shape = tuple((s.valid_until is not None, s.sensor_placement) for s in sources)
        sql = snapshot_tail_sql(shape, self.engine.dialect.name, window=True)
        params: list[Any] = [space_id, fingerprint, before - 1, *_source_params(sources), end]
        batches: AsyncGenerator[Sequence[Sequence[Any]], None]
        if self._sqlite_path is not None:
            batches = self._sqlite_batches(self._sqlite_path, sql, [*params, -1])
        else:
            batches = self._pg_batches(sql, params)
        async with aclosing(batches):
            try:
                first = await anext(batches, None)
            except StoreError as e:
                log.debug("one-statement series not taken: %s", e)
                first = None
            if first is None or len(first) < 3 or first[2][0] != _USABLE:
                yield None
                return
            (_, as_of, entrances), (_, _, exits), (_, _, count) = first[:3]

            async def rows() -> AsyncIterator[Sequence[Sequence[int]]]:
                yield first[3:]
                async for batch in batches:
                    yield batch

            yield SnapshotWindow(SpaceState(as_of, count, entrances, exits), rows())

    async def rollups(
        self,
        space_id: str,
        fingerprint: str,
        sources: Sequence[Source],
        *,
        start: int,
        end: int,
    ) -> list[Sequence[Any]] | None:
        """The rows of :func:`rollups_sql` for the window ``[start, end)``, in one statement;
        ``None`` where it cannot be read this way (the caller folds the log instead)."""
        if not sources or self._closed or (self._sqlite_path is None and self._pg_args is None):
            return None
        shape = tuple((s.valid_until is not None, s.sensor_placement) for s in sources)
        sql = rollups_sql(shape, self.engine.dialect.name)
        params: list[Any] = [space_id, fingerprint, start, *_source_params(sources), end]
        batches: AsyncGenerator[Sequence[Sequence[Any]], None]
        if self._sqlite_path is not None and end - start <= _ON_THE_LOOP_MS:
            return self._sqlite_all(sql, [*params, -1])  # a few hundred rows: no thread hop
        if self._sqlite_path is not None:
            batches = self._sqlite_batches(self._sqlite_path, sql, [*params, -1])
        else:
            batches = self._pg_batches(sql, params)
        found: list[Sequence[Any]] = []
        try:
            async with aclosing(batches):
                async for batch in batches:
                    found += batch
        except StoreError as e:
            log.debug("rollups not read: %s", e)
            return None
        return found

    async def _sqlite_batches(
        self, path: str, sql: str, params: list[Any]
    ) -> AsyncGenerator[list[Any], None]:
        """The rows of ``sql`` in batches, read in worker threads (a year's window must not
        hold the event loop), the next batch read while the caller folds this one. One
        connection is kept for these reads (its page cache stays warm); a read while it is
        in use opens one of its own."""
        kept = not self._window_lock.locked()
        if kept:
            await self._window_lock.acquire()
        conn: sqlite3.Connection | None = self._sqlite_window if kept else None
        pending: asyncio.Future[list[Any]] | None = None
        try:
            if conn is None:
                conn = await asyncio.to_thread(_open_sqlite, path, any_thread=True)
                if kept:
                    self._sqlite_window = conn
            cursor, rows = await asyncio.to_thread(_first_batch, conn, sql, params)
            while rows:
                if len(rows) == _WINDOW_BATCH:
                    pending = asyncio.ensure_future(
                        asyncio.to_thread(cursor.fetchmany, _WINDOW_BATCH)
                    )
                yield rows
                rows = [] if pending is None else await pending
                pending = None
        except sqlite3.Error as e:
            raise StoreError(f"the event store failed: {e}") from e
        finally:
            if pending is not None and not pending.done():
                # The worker cannot be interrupted: let it finish before the cursor goes.
                await asyncio.gather(pending, return_exceptions=True)
            if conn is not None and (not kept or self._closed):
                conn.close()
                if kept:
                    self._sqlite_window = None
            if kept:
                self._window_lock.release()

    async def _pg_batches(self, sql: str, params: list[Any]) -> AsyncGenerator[list[Any], None]:
        """The rows of ``sql`` in batches through a cursor on a fast-read connection."""
        async with self._pg_slots:
            conn = self._pg_idle.pop() if self._pg_idle else None
            try:
                if conn is None:
                    conn = await asyncpg.connect(**(self._pg_args or {}))
                # A short window in one round trip; a longer one again, through a cursor.
                rows = await conn.fetch(sql, *params, _PG_ONE_TRIP)
                if len(rows) < _PG_ONE_TRIP:
                    yield rows
                else:
                    del rows
                    async with conn.transaction(readonly=True):
                        cursor = await conn.cursor(sql, *params, None)
                        while batch := await cursor.fetch(_WINDOW_BATCH):
                            yield batch
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
                if conn is not None:
                    conn.terminate()
                raise StoreError(f"the event store failed: {e}") from e
            except BaseException:  # cancelled or left mid-statement: the state is unknown
                if conn is not None:
                    conn.terminate()
                raise
            if self._closed:
                await conn.close()
            else:
                self._pg_idle.append(conn)

    async def close(self) -> None:
        self._closed = True
        if self._sqlite is not None:
            self._sqlite.close()
            self._sqlite = None
        if self._sqlite_window is not None and not self._window_lock.locked():
            self._sqlite_window.close()
            self._sqlite_window = None
        idle, self._pg_idle = self._pg_idle, []
        for conn in idle:
            await conn.close()


def _open_sqlite(path: str, *, any_thread: bool = False) -> sqlite3.Connection:
    """A read-only autocommit connection: each statement reads one consistent state of the
    file, and never waits for a lock (a busy file sends the caller to the general path).
    ``any_thread``: for worker threads, used by one at a time."""
    conn = sqlite3.connect(
        f"file:{quote(path)}?mode=rw",
        uri=True,
        timeout=0,
        isolation_level=None,
        cached_statements=256,
        check_same_thread=not any_thread,
    )
    conn.execute("PRAGMA query_only = ON")
    return conn


def _first_batch(
    conn: sqlite3.Connection, sql: str, params: list[Any]
) -> tuple[sqlite3.Cursor, list[Any]]:
    """In a worker thread: run ``sql`` and read its first batch (one hop for a short window)."""
    cursor = conn.execute(sql, params)
    return cursor, cursor.fetchmany(_WINDOW_BATCH)
