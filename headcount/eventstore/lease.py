"""Who may use a store at the same time: a lease held for as long as a process works on it.

Services and imports hold it shared: any number of them may append side by side (several
``headcount serve --shard`` processes on one PostgreSQL, an import while serving). A replay that
writes a new snapshot generation holds it exclusively: it folds the log up to one head and must
not see it move, and a running service would keep serving live counts folded under the topology
the replay is replacing. Whoever cannot get the lease is refused at once, with the reason.

The lease dies with its holder, even on ``kill -9``: on PostgreSQL it is a session advisory lock
on a connection of its own, on a SQLite file an ``flock`` on ``<file>.lease`` beside it. An
in-memory SQLite store lives in one process and needs none.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

from sqlalchemy import text

from headcount.errors import StoreBusyError
from headcount.eventstore.engine import translate_errors
from headcount.eventstore.store import EventStore

_PG_LEASE = 0x68636C73  # "hcls"


@asynccontextmanager
async def lease(store: EventStore, *, exclusive: bool, holder: str) -> AsyncIterator[None]:
    """Hold the store's lease (shared or ``exclusive``) while the block runs, or raise
    :class:`StoreBusyError` at once. ``holder`` says what wants it, for the error message."""
    if store.backend == "postgresql":
        async with _pg_lease(store, exclusive=exclusive, holder=holder):
            yield
        return
    path = store.engine.url.database
    if not path or path == ":memory:" or path.startswith("file:"):
        yield
        return
    with _file_lease(f"{path}.lease", exclusive=exclusive, holder=holder):
        yield


@asynccontextmanager
async def _pg_lease(store: EventStore, *, exclusive: bool, holder: str) -> AsyncIterator[None]:
    fn = "pg_try_advisory_lock" if exclusive else "pg_try_advisory_lock_shared"
    async with translate_errors(), store.engine.connect() as conn:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        if not await conn.scalar(text(f"SELECT {fn}(:key)"), {"key": _PG_LEASE}):
            raise _busy(exclusive, holder)
        try:
            yield
        finally:
            unlock = "pg_advisory_unlock" if exclusive else "pg_advisory_unlock_shared"
            with contextlib.suppress(Exception):  # closing the session releases it anyway
                await conn.scalar(text(f"SELECT {unlock}(:key)"), {"key": _PG_LEASE})


@contextlib.contextmanager
def _file_lease(path: str, *, exclusive: bool, holder: str) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _busy(exclusive, holder) from None
        yield
    finally:
        os.close(fd)  # releases the lock


def _busy(exclusive: bool, holder: str) -> StoreBusyError:
    if exclusive:
        return StoreBusyError(
            f"{holder}: a headcount service or import is using this store; stop it first"
            " (a replay must hold the store alone), then start it again afterwards"
        )
    return StoreBusyError(
        f"{holder}: a replay is rewriting this store's snapshots; start again when it has finished"
    )
