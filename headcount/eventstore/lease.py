"""Who may use a store at the same time: a lease held for as long as a process works on it.

Services and imports hold it shared: any number of them may append side by side (several
``headcount serve --shard`` processes on one PostgreSQL, an import while serving). A replay that
writes a new snapshot generation holds it exclusively: it folds the log up to one head and must
not see it move, and a running service would keep serving live counts folded under the topology
the replay is replacing. Whoever cannot get the lease is refused at once, with the reason.

The lease dies with its holder, even on ``kill -9``: on PostgreSQL it is a session advisory lock
on a connection of its own, on a SQLite file an ``flock`` on ``<file>.lease`` beside it. An
in-memory SQLite store lives in one process and needs none.

Each shard of a sharded deployment (``headcount serve --shard I/N``) also has a lock of its own,
:func:`shard_lease`: its owner holds it, a standby with the same ``--shard`` waits for it, and
``headcount replay --shard I/N`` needs it. It is the same kind of lock (a session advisory lock on
PostgreSQL, keyed by ``I`` and ``N``; an ``flock`` on ``<file>.shard-I-of-N.lock`` for SQLite),
so it dies with its holder and a waiting standby takes over within a poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import re
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from headcount.domain.shards import Shard
from headcount.errors import StoreBusyError, StoreError
from headcount.eventstore.engine import translate_errors
from headcount.eventstore.store import EventStore

__all__ = ["ShardLease", "ShardTakenError", "lease", "rewrite_lease", "shard_lease"]

log = logging.getLogger(__name__)

_PG_LEASE = 0x68636C73  # "hcls"
#: The key of :func:`rewrite_lease`.
_PG_REWRITE = 0x68637277  # "hcrw"
#: The first key of a shard's advisory lock (the two-key form); the second is ``N*10000+I``.
_PG_SHARD = 0x68637368  # "hcsh"


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
async def rewrite_lease(store: EventStore, *, exclusive: bool, holder: str) -> AsyncIterator[None]:
    """Hold the lock between the two commands that write snapshots beside running services,
    or raise :class:`StoreBusyError` at once: replays of one shard hold it shared (each
    folds its own spaces), ``partitions detach`` exclusively (a replay folding months the
    detach takes out of the log would supersede the snapshots it writes at the boundary).
    PostgreSQL only: a SQLite log has no partitions to detach."""
    if store.backend != "postgresql":
        yield
        return

    def busy() -> StoreBusyError:
        if exclusive:
            return StoreBusyError(
                f"{holder}: a replay of a shard is rewriting snapshots; run it again when the"
                " replay has finished"
            )
        return StoreBusyError(
            f"{holder}: 'headcount partitions detach' is closing the log; replay when it has"
            " finished, with --from at or after its boundary"
        )

    async with _pg_lease(store, exclusive=exclusive, key=_PG_REWRITE, busy=busy):
        yield


@asynccontextmanager
async def _pg_lease(
    store: EventStore,
    *,
    exclusive: bool,
    holder: str = "",
    key: int = _PG_LEASE,
    busy: Callable[[], StoreBusyError] | None = None,
) -> AsyncIterator[None]:
    fn = "pg_try_advisory_lock" if exclusive else "pg_try_advisory_lock_shared"
    async with translate_errors(), store.engine.connect() as conn:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        if not await conn.scalar(text(f"SELECT {fn}(:key)"), {"key": key}):
            raise _busy(exclusive, holder) if busy is None else busy()
        try:
            yield
        finally:
            unlock = "pg_advisory_unlock" if exclusive else "pg_advisory_unlock_shared"
            with contextlib.suppress(Exception):  # closing the session releases it anyway
                await conn.scalar(text(f"SELECT {unlock}(:key)"), {"key": key})


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


class ShardTakenError(StoreBusyError):
    """The shard's lock was lost (its connection to PostgreSQL broke) and another process took
    it meanwhile: this process must stop serving the shard."""


class ShardLease:
    """A shard's lock, held. :meth:`watch` keeps checking that it still is."""

    def __init__(self, shard: Shard, lock: _ShardLock) -> None:
        self.shard = shard
        self._lock = lock

    async def watch(self, every_s: float = 2.0) -> None:
        """Run until cancelled, checking the lock every ``every_s`` seconds. A lost session
        (PostgreSQL restarted, the connection cut) loses its lock: it is taken again at once;
        if another process (a standby) took it meanwhile, :class:`ShardTakenError`. While the
        store is unreachable the shard keeps serving (no other process can take it then
        either), retrying."""
        while True:
            await asyncio.sleep(every_s)
            if await self._lock.alive():
                continue
            try:
                taken = await self._lock.try_take()
            except StoreError as e:
                log.warning("shard %s: cannot check its lock (%s); retrying", self.shard, e)
                continue
            if not taken:
                raise ShardTakenError(
                    f"shard {self.shard}: the connection holding its lock broke and another"
                    " process took the shard over; stopping (start this one again to be its"
                    " standby)"
                )
            log.warning("shard %s: its lock's connection broke; the lock is held again", self.shard)


@asynccontextmanager
async def shard_lease(
    store: EventStore, shard: Shard, *, wait: bool, holder: str, poll_s: float = 0.5
) -> AsyncIterator[ShardLease]:
    """Hold ``shard``'s lock while the block runs. With ``wait``, wait for it as long as it
    takes (a standby: cancel to give up); else raise :class:`StoreBusyError` at once when
    another process holds it. ``holder`` says what wants it, for the message."""
    lock = _ShardLock(store, shard)
    other = await lock.other_count()
    if other is not None:
        raise StoreBusyError(
            f"{holder}: shard {shard}: other processes serve this store as {other} shards;"
            f" every process of a deployment takes the same count (--shard I/{other}), and"
            " changing it means stopping them all first"
        )
    try:
        while not await _try(lock, wait):
            if not wait:
                raise StoreBusyError(
                    f"{holder}: shard {shard} is held by another process (its headcount serve"
                    f" --shard {shard}); stop it, and its standby, first"
                )
            await asyncio.sleep(poll_s)
        yield ShardLease(shard, lock)
    finally:
        await lock.release()


async def _try(lock: _ShardLock, wait: bool) -> bool:
    try:
        return await lock.try_take()
    except StoreError as e:
        if not wait:
            raise
        log.warning("shard %s: cannot reach the store to take its lock (%s)", lock.shard, e)
        return False


class _ShardLock:
    """The lock itself: a session advisory lock on a connection of its own (PostgreSQL), an
    ``flock`` (a SQLite file), or nothing at all (an in-memory store, one process)."""

    def __init__(self, store: EventStore, shard: Shard) -> None:
        self.store = store
        self.shard = shard
        self._conn: AsyncConnection | None = None
        self._fd: int | None = None
        self._held = False
        path = store.engine.url.database
        self._postgres = store.backend == "postgresql"
        self._path = (
            None
            if self._postgres or not path or path == ":memory:" or path.startswith("file:")
            else f"{path}.shard-{shard.index}-of-{shard.count}.lock"
        )

    @property
    def _keys(self) -> dict[str, int]:
        return {"a": _PG_SHARD, "b": self.shard.count * 10_000 + self.shard.index}

    async def other_count(self) -> int | None:
        """A shard count other than this lock's that a live process holds a shard lock of,
        if any: shards of two counts would each own spaces the others own too."""
        if self._postgres:
            async with translate_errors(), self.store.engine.connect() as conn:
                held = await conn.scalars(
                    text(
                        "SELECT DISTINCT CAST(objid AS bigint) FROM pg_locks WHERE locktype ="
                        " 'advisory' AND objsubid = 2 AND CAST(classid AS bigint) = :a AND"
                        " database = (SELECT oid FROM pg_database"
                        " WHERE datname = current_database())"
                    ),
                    self._keys,
                )
                counts = {int(key) // 10_000 for key in held}
        elif self._path is None:
            return None
        else:
            base = self._path.rsplit(".shard-", 1)[0]
            counts = {count for count, path in _shard_files(base) if _flocked(path)}
        counts.discard(self.shard.count)
        return min(counts, default=None)

    async def try_take(self) -> bool:
        if self._postgres:
            return await self._pg_try()
        if self._path is None or self._fd is not None:
            return True
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    async def _pg_try(self) -> bool:
        async with translate_errors():
            try:
                if self._conn is None:
                    conn = await self.store.engine.connect()
                    self._conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
                got = await self._conn.scalar(
                    text("SELECT pg_try_advisory_lock(:a, :b)"), self._keys
                )
            except BaseException:
                await self._drop()
                raise
        self._held = bool(got)
        return self._held

    async def alive(self) -> bool:
        """Whether the lock is still held (the session holding it is still there)."""
        if not self._postgres:
            return True
        if self._conn is None or not self._held:
            return False
        try:
            async with translate_errors():
                await self._conn.scalar(text("SELECT 1"))
        except StoreError:
            await self._drop()
            return False
        return True

    async def _drop(self) -> None:
        conn, self._conn, self._held = self._conn, None, False
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.invalidate()  # never back into the pool with a lock on it
            with contextlib.suppress(Exception):
                await conn.close()

    async def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the flock
            self._fd = None
        if self._conn is not None and self._held:
            with contextlib.suppress(Exception):
                await self._conn.scalar(text("SELECT pg_advisory_unlock(:a, :b)"), self._keys)
        await self._drop()


def _shard_files(base: str) -> Iterator[tuple[int, str]]:
    """The shard lock files beside a SQLite store, with their shard counts."""
    folder, name = os.path.split(base)
    pattern = re.compile(re.escape(name) + r"\.shard-\d+-of-(\d+)\.lock")
    for entry in os.scandir(folder or "."):
        found = pattern.fullmatch(entry.name)
        if found is not None:
            yield int(found.group(1)), entry.path


def _flocked(path: str) -> bool:
    """Whether a live process holds the ``flock`` of ``path``."""
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
