"""The event log: traversals and resets, appended once and read back in fold order.

This is the truth every answer is folded from. Rows are only ever inserted;
``UNIQUE(dpu_id, seq)`` makes a redelivered traversal harmless.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable, Collection, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from itertools import pairwise
from operator import attrgetter, itemgetter
from typing import Any, Generic, TypeVar

from sqlalchemy import case, func, select, tuple_, union_all
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from headcount.clock import Clock, now_ms
from headcount.domain.events import Reset, Traversal
from headcount.domain.topology import Source
from headcount.errors import ConflictError
from headcount.eventstore import quarantine as quarantine_rows
from headcount.eventstore.answers import RESET, TRAVERSAL
from headcount.eventstore.appending import SQLITE_ROWS, insert_new, insert_traversals
from headcount.eventstore.engine import (
    insert,
    read_transaction,
    translate_errors,
    write_transaction,
)
from headcount.eventstore.engine import within as reading_in
from headcount.eventstore.partitions import archived_before
from headcount.eventstore.records import (
    AppendResult,
    Conflict,
    Head,
    QuarantineEntry,
    StoredReset,
)
from headcount.eventstore.scan import sqlite_file, sqlite_rows
from headcount.eventstore.schema import resets, traversals
from headcount.eventstore.statements import (
    CHUNK,
    TAIL_PAGE,
    resets_query,
    source_at,
    source_params,
    traversals_through,
)

__all__ = ["EventLog", "interleave_resets", "read_head", "reset_ts"]

_R = TypeVar("_R")
_Q = TypeVar("_Q")
_BY_KEY = attrgetter("dpu_id", "seq")
#: Rows in each batch of :meth:`EventLog.scan_log`.
SCAN_BATCH = 5_000


class EventLog:
    """The traversal and reset logs of an open store (``EventStore.log``)."""

    def __init__(self, engine: AsyncEngine, *, clock: Clock = now_ms) -> None:
        self.engine = engine
        self._clock = clock

    # -- appending -------------------------------------------------------------------------

    async def append(
        self,
        batch: Iterable[Traversal],
        *,
        received_at: int | None = None,
        quarantine: Sequence[QuarantineEntry] = (),
    ) -> AppendResult:
        """Store each traversal of ``batch`` once, and the ``quarantine`` entries, in one
        transaction: either all of it is durable or none of it is.

        A traversal already stored (or repeated in the batch) is a duplicate: counted, not
        stored again, never an error. One that reuses a stored ``(dpu_id, seq)`` with other
        content is a conflict: it goes to quarantine with its reason in the same transaction.
        """
        received_at = self._clock() if received_at is None else received_at
        first: dict[tuple[str, int], Traversal] = {}
        repeats: list[Traversal] = []  # later reports of a key already in the batch
        for t in batch:
            key = (t.dpu_id, t.seq)
            if key in first:
                repeats.append(t)
            else:
                first[key] = t
        if not first and not quarantine:
            return AppendResult((), (), 0, ())

        if (
            self.engine.dialect.name == "sqlite"
            and not repeats
            and not quarantine
            and len(first) <= SQLITE_ROWS
        ):
            # New traversals alone (the usual batch): one statement, its own transaction.
            new = tuple(first.values())
            positions = await insert_new(self.engine, new, received_at)
            if positions is not None:
                return AppendResult(new, tuple(positions), 0, ())
        duplicates = 0
        conflicts: list[Conflict] = []
        inserted: dict[tuple[str, int], int] = {}
        async with write_transaction(self.engine) as conn:
            if first:
                rows = list(first.values())
                if conn.dialect.name == "postgresql":
                    # Rows in key order: concurrent appends of overlapping batches then take
                    # the unique index's locks in the same order and cannot deadlock. (SQLite
                    # has one writer at a time: its rows go in as they came.)
                    rows.sort(key=_BY_KEY)
                inserted = await insert_traversals(conn, rows, received_at)
            if len(inserted) < len(first) or repeats:
                # Some keys were stored already (or repeated): what is stored for each is the
                # truth each report is judged by.
                truth = {k: t for k, t in first.items() if k in inserted}
                truth |= await self._stored(conn, [k for k in first if k not in inserted])
                for t in [*(t for k, t in first.items() if k not in inserted), *repeats]:
                    if truth[t.key] == t:
                        duplicates += 1
                    else:
                        conflicts.append(Conflict(reported=t, stored=truth[t.key]))
            refused = [
                *quarantine,
                *(
                    QuarantineEntry(
                        origin=f"append:dpu/{c.reported.dpu_id}",
                        reason=c.reason,
                        payload=repr(c.reported).encode(),
                        received_at=received_at,
                    )
                    for c in conflicts
                ),
            ]
            await quarantine_rows.insert_entries(conn, refused, now=received_at)
        return _result(first, inserted, duplicates, conflicts)

    @staticmethod
    async def _stored(
        conn: AsyncConnection, keys: Sequence[tuple[str, int]]
    ) -> dict[tuple[str, int], Traversal]:
        found: dict[tuple[str, int], Traversal] = {}
        for start in range(0, len(keys), CHUNK):
            chunk = keys[start : start + CHUNK]
            rows = await conn.execute(
                select(
                    traversals.c.dpu_id,
                    traversals.c.seq,
                    traversals.c.ts,
                    traversals.c.direction,
                ).where(tuple_(traversals.c.dpu_id, traversals.c.seq).in_(chunk))
            )
            for dpu_id, seq, ts, direction in rows:
                found[(dpu_id, seq)] = Traversal(dpu_id, seq, ts, direction)
        return found

    async def append_reset(self, reset: Reset) -> StoredReset:
        """Store a reset. The same reset again is harmless; another count for the same space
        and millisecond raises :class:`ConflictError`."""
        async with write_transaction(self.engine) as conn:
            reset_id = await conn.scalar(
                insert(self.engine, resets)
                .values(
                    space_id=reset.space_id,
                    ts=reset.ts,
                    count=reset.count,
                    source=reset.source,
                    recorded_at=self._clock(),
                )
                .on_conflict_do_nothing(index_elements=["space_id", "ts"])
                .returning(resets.c.id)
            )
            if reset_id is not None:
                return StoredReset(reset_id, reset.space_id, reset.ts, reset.count, reset.source)
            row = (
                await conn.execute(
                    select(resets.c.id, resets.c.count, resets.c.source).where(
                        resets.c.space_id == reset.space_id, resets.c.ts == reset.ts
                    )
                )
            ).one()
        stored_id, stored_count, stored_source = row
        if stored_count != reset.count:
            raise ConflictError(
                f"space {reset.space_id!r} already has a reset to {stored_count} at this"
                f" millisecond ({reset.ts}); resets are never edited: use another time"
            )
        return StoredReset(stored_id, reset.space_id, reset.ts, stored_count, stored_source)

    # -- reading ---------------------------------------------------------------------------

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[AsyncConnection]:
        """One read transaction for several reads that belong together (an answer: choosing
        its snapshot, then reading the tail). Pass it as ``within`` to the methods that take
        one; they then check out no connection of their own."""
        async with read_transaction(self.engine) as conn:
            yield conn

    async def head(self, *, within: AsyncConnection | None = None) -> Head:
        """The newest traversal position and reset id (0 when empty). On PostgreSQL it is read
        under the log's exclusive lock, as a snapshot write reads it: an append still in flight
        could otherwise commit a position below it later, and a fold up to this head (a replay
        of one shard beside the others, which keep appending) would miss that event. On
        SQLite, ``within`` a transaction of :meth:`reading` (PostgreSQL's takes its own)."""
        if self.engine.dialect.name != "postgresql":
            async with reading_in(self.engine, within) as conn:
                return await read_head(conn)
        async with write_transaction(self.engine, exclusive=True) as conn:
            return await read_head(conn)

    async def count_traversals(self) -> int:
        async with read_transaction(self.engine) as conn:
            return int(await conn.scalar(select(func.count()).select_from(traversals)) or 0)

    async def count_seqs(self, dpu_id: str, first: int, last: int) -> int:
        """How many traversals of ``dpu_id`` are stored with ``first <= seq <= last`` (a range
        of the unique index: it reads those rows' index entries only)."""
        async with read_transaction(self.engine) as conn:
            query = (
                select(func.count())
                .select_from(traversals)
                .where(traversals.c.dpu_id == dpu_id, traversals.c.seq.between(first, last))
            )
            return int(await conn.scalar(query) or 0)

    async def newest_ts(
        self, dpu_ids: Iterable[str], *, within: AsyncConnection | None = None
    ) -> int | None:
        """The newest event time reported by any of ``dpu_ids``, in one statement (each DPU's
        newest read from the end of its index)."""
        newest = [
            select(func.max(traversals.c.ts).label("ts")).where(traversals.c.dpu_id == dpu_id)
            for dpu_id in sorted(set(dpu_ids))
        ]
        if not newest:
            return None
        query = (
            newest[0] if len(newest) == 1 else select(func.max(union_all(*newest).subquery().c.ts))
        )
        async with reading_in(self.engine, within) as conn:
            ts = await conn.scalar(query)
        return None if ts is None else int(ts)

    async def closed_before(self) -> int | None:
        """The time before which the log holds no event and refuses new ones, where
        ``partitions detach`` closed it (PostgreSQL); ``None`` for a log never closed."""
        return await archived_before(self.engine)

    async def newest_ts_by_dpu(self) -> dict[str, int]:
        """The newest event time of every DPU that reported anything, in one query."""
        async with read_transaction(self.engine) as conn:
            rows = await conn.execute(
                select(traversals.c.dpu_id, func.max(traversals.c.ts)).group_by(traversals.c.dpu_id)
            )
            return {dpu_id: ts for dpu_id, ts in rows}

    async def space_log(
        self,
        space_id: str,
        sources: Sequence[Source],
        *,
        after: int | None,
        until: int,
        head: Head | None = None,
        within: AsyncConnection | None = None,
    ) -> AsyncIterator[StoredReset | tuple[Traversal, Source]]:
        """Everything that reached a space with ``after < ts <= until`` (up to ``head`` in the
        logs when given), in fold order: its resets, and the traversals through ``sources``,
        each with the source it came through. Memory stays bounded. One transaction,
        and for a short tail one query each: this is on the path of every past answer."""
        async for batch in self._space_batches(
            space_id, sources, _LOGGED, after=after, until=until, head=head, within=within
        ):
            for item in batch:
                yield item

    async def space_rows(
        self,
        space_id: str,
        sources: Sequence[Source],
        *,
        after: int | None,
        until: int,
        head: Head | None = None,
        within: AsyncConnection | None = None,
    ) -> AsyncIterator[Sequence[tuple[int, int, int]]]:
        """What :meth:`space_log` reads, as rows ``(kind, ts, value)`` in batches (a fold's
        inner loop stays a plain loop over a list, with no object per event): ``kind``
        ``answers.RESET`` with ``value`` the count set, or ``answers.TRAVERSAL`` with
        ``value`` the traversal's delta to the space (``domain.events.space_delta``)."""
        async for batch in self._space_batches(
            space_id, sources, _AS_ROWS, after=after, until=until, head=head, within=within
        ):
            yield batch

    async def _space_batches(
        self,
        space_id: str,
        sources: Sequence[Source],
        shape: _Shape[_R],
        *,
        after: int | None,
        until: int,
        head: Head | None,
        within: AsyncConnection | None,
    ) -> AsyncIterator[Sequence[_R]]:
        """The space's resets merged into its traversals in fold order, each made an item by
        ``shape`` (see :class:`_Shape`)."""
        async with reading_in(self.engine, within) as conn:
            query = resets_query(
                space_id,
                after=after,
                until=until,
                max_id=None if head is None else head.reset_id,
                after_id=None,
            )
            found = [shape.reset(StoredReset(*row)) for row in await conn.execute(query)]
            pages = _traversal_pages(
                conn,
                tuple(sources),
                shape.traversals,
                after=after,
                until=until,
                max_position=None if head is None else head.position,
            )
            async for batch in interleave_resets(found, pages, shape.ts, shape.ts):
                yield batch

    async def scan_log(
        self,
        *,
        dpu_ids: Collection[str] | None = None,
        after: int | None,
        head: Head,
        seq_after: int | None = None,
        on_loop: bool = False,
    ) -> AsyncIterator[Sequence[tuple[str, int | None, int, int]]]:
        """Every traversal up to log position ``head.position`` with ``ts > after``, as rows
        ``(dpu_id, seq, ts, direction)`` in fold order, optionally only from ``dpu_ids``, in
        batches (a replay's inner loop stays a plain loop over a list). Streams, so memory
        stays bounded however long the log is. With ``seq_after``, ``seq`` is read only for
        rows with ``ts > seq_after`` (``None`` before): a pass that needs no key for most
        rows makes no number of them (a quarter of the scan's time)."""
        seq = (
            traversals.c.seq
            if seq_after is None
            else case((traversals.c.ts > seq_after, traversals.c.seq)).label("seq")
        )
        stmt = select(traversals.c.dpu_id, seq, traversals.c.ts, traversals.c.direction).where(
            traversals.c.position <= head.position
        )
        if after is not None:
            stmt = stmt.where(traversals.c.ts > after)
        if dpu_ids is not None:
            stmt = stmt.where(traversals.c.dpu_id.in_(sorted(dpu_ids)))
        stmt = stmt.order_by(traversals.c.ts, traversals.c.dpu_id, traversals.c.seq)
        path = sqlite_file(self.engine)
        if path is not None:
            compiled = stmt.compile(
                dialect=self.engine.dialect, compile_kwargs={"render_postcompile": True}
            )
            params = [compiled.params[name] for name in compiled.positiontup or ()]
            async for rows in sqlite_rows(
                path, str(compiled), params, batch=SCAN_BATCH, on_loop=on_loop
            ):
                yield rows
            return
        async with translate_errors(), self.engine.connect() as conn:
            result = await conn.stream(stmt.execution_options(yield_per=SCAN_BATCH))
            async for partition in result.partitions():
                yield partition

    async def resets_up_to(self, head: Head, *, after: int | None) -> list[StoredReset]:
        """Every reset up to ``head.reset_id`` with ``ts > after``, in time order. Resets are
        set by hand: few next to traversals, so they are read at once."""
        stmt = select(
            resets.c.id, resets.c.space_id, resets.c.ts, resets.c.count, resets.c.source
        ).where(resets.c.id <= head.reset_id)
        if after is not None:
            stmt = stmt.where(resets.c.ts > after)
        async with read_transaction(self.engine) as conn:
            rows = await conn.execute(stmt.order_by(resets.c.ts, resets.c.space_id))
            return [StoredReset(*row) for row in rows]


def _result(
    first: dict[tuple[str, int], Traversal],
    inserted: dict[tuple[str, int], int],
    duplicates: int,
    conflicts: list[Conflict],
) -> AppendResult:
    """What an append did, ``new`` in log order. Without duplicates the rows usually went in
    in the batch's order: then that order is kept without a sort."""
    if len(inserted) == len(first):
        positions = [inserted[k] for k in first]
        if all(a < b for a, b in pairwise(positions)):
            return AppendResult(
                tuple(first.values()), tuple(positions), duplicates, tuple(conflicts)
            )
    new = sorted((inserted[k], t) for k, t in first.items() if k in inserted)
    return AppendResult(
        new=tuple(t for _, t in new),
        positions=tuple(pos for pos, _ in new),
        duplicates=duplicates,
        conflicts=tuple(conflicts),
    )


async def interleave_resets(
    found: Sequence[_Q],
    batches: AsyncIterable[Sequence[_R]],
    ts_of: Callable[[_R], int],
    reset_ts: Callable[[_Q], int],
) -> AsyncIterator[Sequence[_Q | _R]]:
    """Merge resets (in time order, each's time by ``reset_ts``) into batches of traversal
    rows (in fold order, by ``ts_of``) by time, a reset before the traversals of its
    millisecond (see ``domain.events.fold_key``): the one place the two logs are put in fold
    order together. A batch no reset falls into passes through as it is."""
    pending = list(reversed(found))  # a stack, the earliest last
    async for batch in batches:
        if not batch:
            continue
        if not pending or reset_ts(pending[-1]) > ts_of(batch[-1]):
            yield batch
            continue
        merged: list[_Q | _R] = []
        for row in batch:
            ts = ts_of(row)
            while pending and reset_ts(pending[-1]) <= ts:
                merged.append(pending.pop())
            merged.append(row)
        yield merged
    if pending:
        yield pending[::-1]


async def read_head(conn: AsyncConnection) -> Head:
    """How far the logs go, read in ``conn``'s transaction."""
    row = (
        await conn.execute(
            select(
                select(func.max(traversals.c.position)).scalar_subquery(),
                select(func.max(resets.c.id)).scalar_subquery(),
            )
        )
    ).one()
    return Head(row[0] or 0, row[1] or 0)


@dataclass(frozen=True, slots=True)
class _Shape(Generic[_R]):
    """How a space's log is read back: ``reset`` makes a stored reset an item,
    ``traversals`` a page of traversal rows ``(dpu_id, seq, ts, direction)`` items (with the
    DPU's sources by id), and ``ts`` is an item's time."""

    reset: Callable[[StoredReset], _R]
    traversals: Callable[[Sequence[Any], dict[str, list[Source]]], list[_R]]
    ts: Callable[[_R], int]


def reset_ts(reset: StoredReset) -> int:
    """A stored reset's time (for :func:`interleave_resets`)."""
    return reset.ts


def _with_sources(
    rows: Sequence[Any], by_dpu: dict[str, list[Source]]
) -> list[StoredReset | tuple[Traversal, Source]]:
    """Traversal rows as traversals, each with the source it came through."""
    return [
        (Traversal(dpu_id, seq, ts, direction), source_at(by_dpu[dpu_id], ts))
        for dpu_id, seq, ts, direction in rows
    ]


def _logged_ts(item: StoredReset | tuple[Traversal, Source]) -> int:
    return reset_ts(item) if isinstance(item, StoredReset) else item[0].ts


def _delta_rows(rows: Sequence[Any], by_dpu: dict[str, list[Source]]) -> list[tuple[int, int, int]]:
    """Traversal rows as ``(TRAVERSAL, ts, delta to the space)``: by one placement per DPU
    where each DPU came through one source (the common case), else by the source at the
    time."""
    if all(len(found) == 1 for found in by_dpu.values()):
        placement = {dpu_id: found[0].sensor_placement for dpu_id, found in by_dpu.items()}
        return [(TRAVERSAL, ts, direction * placement[dpu_id]) for dpu_id, _, ts, direction in rows]
    return [
        (TRAVERSAL, ts, direction * source_at(by_dpu[dpu_id], ts).sensor_placement)
        for dpu_id, _, ts, direction in rows
    ]


_LOGGED: _Shape[StoredReset | tuple[Traversal, Source]] = _Shape(
    lambda reset: reset, _with_sources, _logged_ts
)
_AS_ROWS: _Shape[tuple[int, int, int]] = _Shape(
    lambda reset: (RESET, reset.ts, reset.count), _delta_rows, itemgetter(1)
)


async def _traversal_pages(
    conn: AsyncConnection,
    sources: tuple[Source, ...],
    shape: Callable[[Sequence[Any], dict[str, list[Source]]], list[_R]],
    *,
    after: int | None,
    until: int,
    max_position: int | None,
) -> AsyncIterator[list[_R]]:
    """The first :data:`TAIL_PAGE` rows by a plain query (a tail after a snapshot fits: one
    round trip), the rest, if any, streamed after the last of them (a server-side cursor:
    round trips of its own, but one sort however long the log); in pages, each made into
    items by ``shape``."""
    params: dict[str, Any] | None = source_params(sources, after=after, until=until)
    if params is None:
        return
    by_dpu: dict[str, list[Source]] = {}
    for s in sources:
        by_dpu.setdefault(s.dpu_id, []).append(s)
    if max_position is not None:
        params["max_position"] = max_position
    bounded = max_position is not None
    rows = (await conn.execute(traversals_through(sources, bounded, False), params)).all()
    yield shape(rows, by_dpu)
    if len(rows) < TAIL_PAGE:
        return
    last_dpu, last_seq, last_ts, _ = rows[-1]
    params |= {"key_ts": last_ts, "key_dpu": last_dpu, "key_seq": last_seq}
    rest = await conn.stream(traversals_through(sources, bounded, True), params)
    async for page in rest.partitions():
        yield shape(page, by_dpu)
