"""Opening a store URL: engine settings per backend, write locks, and driver-error translation.

This is the one place that opens a URL; ``answers`` and ``scan`` read its engine's URL to reach
the same database through the bare drivers.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from typing import Any

from asyncpg import exceptions as asyncpg_exceptions
from sqlalchemy import Table, event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, ExceptionContext, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DataError,
    DBAPIError,
    IntegrityError,
    SQLAlchemyError,
    StatementError,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import PoolResetState

from headcount.errors import StoreDataError, StoreError, StoreWritesRefusedError

DEFAULT_URL = "sqlite+aiosqlite:///headcount.db"

#: Key of the PostgreSQL advisory lock that orders appends against snapshot writes: appends
#: hold it shared (they may run side by side), snapshot writes exclusive.
_PG_LOG_LOCK = 0x68636E74  # "hcnt"
_WRITE = "headcount_write"


def create_engine(url: str) -> AsyncEngine:
    """An async engine for a store URL (``sqlite+aiosqlite:///file.db`` or
    ``postgresql+asyncpg://user@host/db``). Plain ``sqlite:///`` and ``postgresql://`` are
    accepted and given their async driver."""
    try:
        parsed = make_url(url)
    except ArgumentError as e:
        raise StoreError(
            f"cannot read store URL {url!r}: expected e.g. {DEFAULT_URL!r} or"
            " 'postgresql+asyncpg://user@host:5432/db'"
        ) from e
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        parsed = parsed.set(drivername="sqlite+aiosqlite")
        # The pool's rollback of every connection it takes back is a round trip to the
        # driver's thread; _configure_sqlite rolls back only one still in a transaction.
        engine = create_async_engine(
            parsed, connect_args={"timeout": 30}, pool_reset_on_return=None
        )
        _configure_sqlite(engine)
        event.listen(engine.sync_engine, "handle_error", _drop_read_only_connections)
        return engine
    if backend == "postgresql":
        parsed = parsed.set(drivername="postgresql+asyncpg")
        engine = create_async_engine(parsed, pool_size=5, max_overflow=5, pool_pre_ping=True)
        event.listen(engine.sync_engine, "handle_error", _drop_read_only_connections)
        return engine
    raise StoreError(
        f"store URL {url!r} names {backend!r}; headcount stores events in SQLite or PostgreSQL"
    )


def _configure_sqlite(engine: AsyncEngine) -> None:
    # pysqlite's own transaction handling would defer BEGIN until the first write, which lets two
    # writers read, then collide. We emit BEGIN ourselves: IMMEDIATE (the write lock) for writes.
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        _use_wal(cursor)
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get(_WRITE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    @event.listens_for(engine.sync_engine, "reset")
    def _on_reset(dbapi_connection: Any, _record: Any, state: PoolResetState) -> None:
        # Back in the pool: a transaction left open (a caller that failed between BEGIN and
        # its end) is rolled back; a connection outside any, the usual case, costs nothing.
        if (
            state.asyncio_safe
            and not state.terminate_only
            and dbapi_connection.driver_connection.in_transaction
        ):
            dbapi_connection.rollback()


def _drop_read_only_connections(context: ExceptionContext) -> None:
    """A connection that found its store read-only stays so after the store is writable again
    (SQLite opened the file read-only; a PostgreSQL session keeps the
    ``default_transaction_read_only`` it started with), and after a write error its state is
    in doubt. Drop it as if disconnected: the next attempt opens a fresh one."""
    if writes_refused(context.original_exception) in ("read-only", _WRITE_ERROR):
        context.is_disconnect = True


def _use_wal(cursor: Any) -> None:
    """Switch the file to WAL (once per file; it stays). Changing the journal mode does not
    wait on the busy timeout: a new file being set up by another connection answers 'locked',
    so retry for a while before giving up."""
    cursor.execute("PRAGMA journal_mode")
    if cursor.fetchone()[0] == "wal":
        return
    for attempt in range(100):
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except Exception as e:  # the adapter's OperationalError; only 'locked' is retried
            if "locked" not in str(e) or attempt == 99:
                raise
            time.sleep(0.05)


def insert(engine: AsyncEngine, table: Table) -> Any:
    """The backend's own INSERT for ``table``, which knows ``ON CONFLICT DO NOTHING``."""
    return (postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert)(table)


@asynccontextmanager
async def write_transaction(
    engine: AsyncEngine, *, exclusive: bool = False, pg_lock: int = _PG_LOG_LOCK
) -> AsyncIterator[AsyncConnection]:
    """A transaction that orders itself against the store's other writers.

    SQLite has one writer at a time (``BEGIN IMMEDIATE``). On PostgreSQL appends take the log
    lock shared and snapshot writes take it ``exclusive``, so a snapshot's log position is never
    overtaken by an append that committed later but started earlier. ``pg_lock`` names another
    advisory lock for writers that must not touch the log's (schema migrations).
    """
    async with translate_errors(), engine.connect() as conn:
        conn = await conn.execution_options(**{_WRITE: True})
        async with conn.begin():
            if conn.dialect.name == "postgresql":
                fn = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
                await conn.execute(text(f"SELECT {fn}(:key)"), {"key": pg_lock})
            yield conn


@asynccontextmanager
async def read_transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A read-only transaction with the store's errors translated."""
    async with translate_errors(), engine.connect() as conn, conn.begin():
        yield conn


def within(
    engine: AsyncEngine, conn: AsyncConnection | None
) -> AbstractAsyncContextManager[AsyncConnection]:
    """``conn`` when given (a transaction the caller holds for several reads that belong
    together), else a new read transaction of ``engine``."""
    return nullcontext(conn) if conn is not None else read_transaction(engine)


@asynccontextmanager
async def driver_connection(engine: AsyncEngine) -> AsyncIterator[Any]:
    """The driver's own connection (aiosqlite's), checked out of ``engine``'s pool and outside
    any transaction, for a statement that SQLAlchemy would send in several round trips to the
    driver's thread (``appending.insert_new``). Its errors are translated as SQLAlchemy's are
    (:func:`translate_errors`), and a connection whose store refuses writes is dropped."""
    async with translate_errors(), engine.connect() as conn:
        raw = await conn.get_raw_connection()
        try:
            yield raw.driver_connection
        except sqlite3.Error as e:
            if writes_refused(e) in ("read-only", _WRITE_ERROR):
                await conn.invalidate()
            raise DBAPIError.instance(None, None, e, sqlite3.Error) from e


@asynccontextmanager
async def translate_errors() -> AsyncIterator[None]:
    """Turn driver and SQLAlchemy errors into :class:`StoreError` (the cause stays chained):
    :class:`StoreDataError` when the data was refused (see :func:`is_data_error`), so a caller
    can tell what retrying cannot fix from a store that is down or busy."""
    try:
        yield
    except DBAPIError as e:
        _raise_writes_refused(e, e.orig)
        kind = StoreDataError if is_data_error(e) else StoreError
        raise kind(f"the event store failed: {e.orig}") from e
    except SQLAlchemyError as e:
        kind = StoreDataError if is_data_error(e) else StoreError
        raise kind(f"the event store failed: {e}") from e
    except OSError as e:
        raise StoreError(f"cannot reach the event store: {e}") from e
    except (UnicodeError, OverflowError) as e:
        # The SQLite driver raises these unwrapped when it cannot bind a value (a lone
        # surrogate in a string, an integer beyond 64 bits).
        raise StoreDataError(f"the event store cannot hold a value: {e}") from e


_WRITE_ERROR = "write error (its file or disk is read-only, or the disk fails)"
#: Why a store refuses every write, by SQLite's primary result code and by PostgreSQL SQLSTATE.
_SQLITE_REFUSALS = {
    "SQLITE_FULL": "disk full",
    "SQLITE_READONLY": "read-only",
    "SQLITE_IOERR": _WRITE_ERROR,
}
_PG_REFUSALS = {
    "53100": "disk full",  # disk_full
    "25006": "read-only",  # read_only_sql_transaction (a standby, default_transaction_read_only)
    "58030": _WRITE_ERROR,  # io_error
}
_ADVICE = {
    "disk full": "free space on the store's disk",
    "read-only": "make the store's file (or database) writable again",
    _WRITE_ERROR: "check that the store's file and disk are writable and healthy",
}


def writes_refused(error: BaseException | None) -> str | None:
    """Why the store refuses writes whatever they hold ("disk full", "read-only", a write
    error), judged from a driver error; ``None`` for any other error. These are neither bad
    data (the same write succeeds once the cause is fixed) nor a store that is down."""
    if error is None:
        return None
    name = getattr(error, "sqlite_errorname", None)  # sqlite3 errors, e.g. SQLITE_IOERR_WRITE
    if isinstance(name, str):
        for code, why in _SQLITE_REFUSALS.items():
            if name == code or name.startswith(code + "_"):
                return why
    sqlstate = getattr(error, "sqlstate", None)
    if isinstance(sqlstate, str):
        return _PG_REFUSALS.get(sqlstate)
    return None


def _raise_writes_refused(error: DBAPIError, orig: BaseException | None) -> None:
    why = writes_refused(orig)
    if why is not None:
        raise StoreWritesRefusedError(
            f"the store refuses writes: {why}; the database says: {orig}; {_ADVICE[why]}:"
            " nothing is lost,"
            " what waits is written once it can be",
            why=why,
        ) from error


#: SQLSTATE classes of PostgreSQL errors caused by the data itself: data exception (a value too
#: long, a character the encoding refuses, a number out of range), integrity violation.
_DATA_SQLSTATE_CLASSES = ("22", "23")


def is_data_error(error: BaseException) -> bool:
    """Whether ``error`` (or an error it was raised from) says the store refused the data
    rather than failed: SQLAlchemy's ``DataError`` and ``IntegrityError``, a ``StatementError``
    that is no driver error (a value that could not be bound), a PostgreSQL error of SQLSTATE
    class 22 or 23, a value the driver could not encode (``UnicodeError``, ``OverflowError``,
    asyncpg's invalid query input). Connection, timeout and lock errors are not."""
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, DataError | IntegrityError | UnicodeError | OverflowError):
            return True
        if isinstance(e, StatementError) and not isinstance(e, DBAPIError):
            return True
        sqlstate = getattr(e, "sqlstate", None)
        if isinstance(sqlstate, str) and sqlstate[:2] in _DATA_SQLSTATE_CLASSES:
            return True
        if isinstance(e, ValueError) and isinstance(e, asyncpg_exceptions.InterfaceError):
            return True  # asyncpg's DataError: a query argument it cannot send
        e = e.orig if isinstance(e, DBAPIError) and e.orig is not None else e.__cause__
    return False
