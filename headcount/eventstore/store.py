"""The append-only event store: append traversals and resets, read them back in fold order,
keep snapshots and quarantined input."""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator, Collection, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from functools import lru_cache
from types import TracebackType
from typing import Any, Self

from sqlalchemy import Table, and_, bindparam, exists, func, or_, select, tuple_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from headcount.domain.events import Reset, Traversal
from headcount.domain.fold import SpaceState
from headcount.domain.topology import Source
from headcount.errors import ConflictError
from headcount.eventstore import migrate
from headcount.eventstore.engine import (
    DEFAULT_URL,
    create_engine,
    read_transaction,
    translate_errors,
    write_transaction,
)
from headcount.eventstore.records import (
    AppendResult,
    Conflict,
    Head,
    LateMark,
    QuarantineEntry,
    ReplayedSpace,
    Snapshot,
    StoredReset,
)
from headcount.eventstore.schema import (
    LATE,
    quarantine,
    replayed_spaces,
    replays,
    resets,
    snapshots,
    topologies,
    traversals,
)

#: Rows per statement where a batch is split (bind-parameter limits, statement size).
_CHUNK = 500
#: Rows per page of a space's traversals: a tail after a snapshot fits in one.
_TAIL_PAGE = 1_000


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class EventStore:
    """An open event store. Use :meth:`open` (an async context manager) to get one."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._insert_traversals = (
            self._insert(traversals)
            .on_conflict_do_nothing(index_elements=["dpu_id", "seq"])
            .returning(traversals.c.position, traversals.c.dpu_id, traversals.c.seq)
        )

    @classmethod
    async def open(cls, url: str = DEFAULT_URL, *, upgrade: bool = True) -> EventStore:
        """Connect to the store at ``url`` and, unless ``upgrade`` is false, bring its schema
        to the current version (creating it in an empty database)."""
        engine = create_engine(url)
        try:
            if upgrade:
                await migrate.upgrade(engine)
            else:
                await migrate.check_current(engine)
        except BaseException:
            await engine.dispose()
            raise
        return cls(engine)

    async def close(self) -> None:
        await self.engine.dispose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def backend(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self.engine.dialect.name

    # -- appending -------------------------------------------------------------------------

    async def append(
        self, batch: Iterable[Traversal], *, received_at: int | None = None
    ) -> AppendResult:
        """Store each traversal of ``batch`` once, in one transaction.

        A traversal already stored (or repeated in the batch) is a duplicate: counted, not
        stored again, never an error. One that reuses a stored ``(dpu_id, seq)`` with other
        content is a conflict: it goes to quarantine with its reason in the same transaction.
        """
        received_at = now_ms() if received_at is None else received_at
        first: dict[tuple[str, int], Traversal] = {}
        repeats: list[Traversal] = []  # later reports of a key already in the batch
        for t in batch:
            if t.key in first:
                repeats.append(t)
            else:
                first[t.key] = t
        if not first:
            return AppendResult((), (), 0, ())

        duplicates = 0
        conflicts: list[Conflict] = []
        async with write_transaction(self.engine) as conn:
            newest_snapshot = await conn.scalar(select(func.max(snapshots.c.as_of)))
            inserted = await self._insert_new(
                conn, list(first.values()), received_at, newest_snapshot
            )
            # What is stored now for every key of the batch: the truth each report is judged by.
            truth = {k: t for k, t in first.items() if k in inserted}
            truth |= await self._stored(conn, [k for k in first if k not in inserted])
            for t in [*(t for k, t in first.items() if k not in inserted), *repeats]:
                if truth[t.key] == t:
                    duplicates += 1
                else:
                    conflicts.append(Conflict(reported=t, stored=truth[t.key]))
            if conflicts:
                await self._quarantine(
                    conn,
                    [
                        QuarantineEntry(
                            origin=f"append:dpu/{c.reported.dpu_id}",
                            reason=c.reason,
                            payload=repr(c.reported).encode(),
                            received_at=received_at,
                        )
                        for c in conflicts
                    ],
                )
        new = sorted((inserted[k], t) for k, t in first.items() if k in inserted)
        return AppendResult(
            new=tuple(t for _, t in new),
            positions=tuple(pos for pos, _ in new),
            duplicates=duplicates,
            conflicts=tuple(conflicts),
        )

    async def _insert_new(
        self,
        conn: AsyncConnection,
        batch: list[Traversal],
        received_at: int,
        newest_snapshot: int | None,
    ) -> dict[tuple[str, int], int]:
        inserted: dict[tuple[str, int], int] = {}
        # Rows in key order: concurrent appends of overlapping batches then take the unique
        # index's locks in the same order and cannot deadlock (PostgreSQL).
        batch = sorted(batch, key=lambda t: t.key)
        rows = [
            {
                "dpu_id": t.dpu_id,
                "seq": t.seq,
                "ts": t.ts,
                "direction": t.direction,
                "received_at": received_at,
                "late": newest_snapshot is not None and t.ts <= newest_snapshot,
            }
            for t in batch
        ]
        # One compiled statement, executed for many rows: SQLAlchemy batches it into multi-row
        # INSERTs with RETURNING ("insertmanyvalues") on both backends.
        result = await conn.execute(self._insert_traversals, rows)
        for position, dpu_id, seq in result:
            inserted[(dpu_id, seq)] = position
        return inserted

    async def _stored(
        self, conn: AsyncConnection, keys: Sequence[tuple[str, int]]
    ) -> dict[tuple[str, int], Traversal]:
        found: dict[tuple[str, int], Traversal] = {}
        for start in range(0, len(keys), _CHUNK):
            chunk = keys[start : start + _CHUNK]
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
                self._insert(resets)
                .values(
                    space_id=reset.space_id,
                    ts=reset.ts,
                    count=reset.count,
                    source=reset.source,
                    recorded_at=now_ms(),
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

    def _insert(self, table: Table) -> Any:
        """The backend's INSERT, which knows ON CONFLICT DO NOTHING."""
        return (postgresql.insert if self.backend == "postgresql" else sqlite.insert)(table)

    async def quarantine(self, entries: Sequence[QuarantineEntry]) -> None:
        """Keep refused input with its reason."""
        if entries:
            async with write_transaction(self.engine) as conn:
                await self._quarantine(conn, entries)

    @staticmethod
    async def _quarantine(conn: AsyncConnection, entries: Sequence[QuarantineEntry]) -> None:
        now = now_ms()
        await conn.execute(
            quarantine.insert(),
            [
                {
                    "received_at": e.received_at or now,
                    "origin": e.origin,
                    "reason": e.reason,
                    "payload": e.payload,
                }
                for e in entries
            ],
        )

    async def quarantined(self, *, limit: int = 100) -> list[QuarantineEntry]:
        """The newest quarantined entries, newest first."""
        async with read_transaction(self.engine) as conn:
            rows = await conn.execute(
                select(quarantine).order_by(quarantine.c.id.desc()).limit(limit)
            )
            return [QuarantineEntry(r.origin, r.reason, r.payload, r.received_at) for r in rows]

    async def record_topology(self, document: str, *, origin: str) -> bool:
        """Make ``document`` (topology TOML) the store's current topology. Returns whether it
        differs from the current one (an unchanged topology is not recorded again)."""
        digest = hashlib.sha256(document.encode()).hexdigest()
        async with write_transaction(self.engine) as conn:
            current = await conn.scalar(
                select(topologies.c.digest).order_by(topologies.c.id.desc()).limit(1)
            )
            if current == digest:
                return False
            await conn.execute(
                topologies.insert().values(
                    digest=digest, document=document, origin=origin, recorded_at=now_ms()
                )
            )
        return True

    async def current_topology(self) -> tuple[str, str] | None:
        """The newest recorded topology document and where it came from, if any."""
        async with read_transaction(self.engine) as conn:
            row = (
                await conn.execute(
                    select(topologies.c.document, topologies.c.origin)
                    .order_by(topologies.c.id.desc())
                    .limit(1)
                )
            ).first()
        return None if row is None else (row.document, row.origin)

    # -- reading ---------------------------------------------------------------------------

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[AsyncConnection]:
        """One read transaction for several reads that belong together (an answer: choosing
        its snapshot, then reading the tail). Pass it as ``within`` to the methods that take
        one; they then check out no connection of their own."""
        async with read_transaction(self.engine) as conn:
            yield conn

    def _within(self, within: AsyncConnection | None) -> AbstractAsyncContextManager[Any]:
        return nullcontext(within) if within is not None else read_transaction(self.engine)

    async def head(self) -> Head:
        """The newest traversal position and reset id (0 when empty)."""
        async with read_transaction(self.engine) as conn:
            return await self._head(conn)

    @staticmethod
    async def _head(conn: AsyncConnection) -> Head:
        position = await conn.scalar(select(func.max(traversals.c.position)))
        reset_id = await conn.scalar(select(func.max(resets.c.id)))
        return Head(position or 0, reset_id or 0)

    async def count_traversals(self) -> int:
        async with read_transaction(self.engine) as conn:
            return int(await conn.scalar(select(func.count()).select_from(traversals)) or 0)

    async def newest_ts(self, dpu_ids: Iterable[str]) -> int | None:
        """The newest event time reported by any of ``dpu_ids``."""
        newest: int | None = None
        async with read_transaction(self.engine) as conn:
            for dpu_id in sorted(set(dpu_ids)):
                ts = await conn.scalar(
                    select(func.max(traversals.c.ts)).where(traversals.c.dpu_id == dpu_id)
                )
                if ts is not None and (newest is None or ts > newest):
                    newest = ts
        return newest

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
        async with self._within(within) as conn:
            query = self._resets_query(
                space_id,
                after=after,
                until=until,
                max_id=None if head is None else head.reset_id,
                after_id=None,
            )
            pending = [StoredReset(*row) for row in await conn.execute(query)]
            pending.reverse()  # a stack, the earliest last
            async for item in self._traversal_pages(
                conn,
                tuple(sources),
                after=after,
                until=until,
                max_position=None if head is None else head.position,
            ):
                # A reset goes before the traversals of its millisecond (fold_key).
                while pending and pending[-1].ts <= item[0].ts:
                    yield pending.pop()
                yield item
            while pending:
                yield pending.pop()

    @staticmethod
    async def _traversal_pages(
        conn: AsyncConnection,
        sources: tuple[Source, ...],
        *,
        after: int | None,
        until: int,
        max_position: int | None,
    ) -> AsyncIterator[tuple[Traversal, Source]]:
        """The first :data:`_TAIL_PAGE` rows by a plain query (a tail after a snapshot fits:
        one round trip), the rest, if any, streamed after the last of them (a server-side
        cursor: round trips of its own, but one sort however long the log)."""
        params: dict[str, Any] | None = _source_params(sources, after=after, until=until)
        if params is None:
            return
        by_dpu: dict[str, list[Source]] = {}
        for s in sources:
            by_dpu.setdefault(s.dpu_id, []).append(s)
        if max_position is not None:
            params["max_position"] = max_position
        bounded = max_position is not None
        rows = (await conn.execute(_traversals_through(sources, bounded, False), params)).all()
        for dpu_id, seq, ts, direction in rows:
            yield Traversal(dpu_id, seq, ts, direction), _source_at(by_dpu[dpu_id], ts)
        if len(rows) < _TAIL_PAGE:
            return
        last_dpu, last_seq, last_ts, _ = rows[-1]
        params |= {"key_ts": last_ts, "key_dpu": last_dpu, "key_seq": last_seq}
        rest = await conn.stream(_traversals_through(sources, bounded, True), params)
        async for dpu_id, seq, ts, direction in rest:
            yield Traversal(dpu_id, seq, ts, direction), _source_at(by_dpu[dpu_id], ts)

    async def scan_log(
        self, *, dpu_ids: Collection[str] | None = None, after: int | None, head: Head
    ) -> AsyncIterator[tuple[str, int, int, int]]:
        """Every traversal up to log position ``head.position`` with ``ts > after``, as rows
        ``(dpu_id, seq, ts, direction)`` in fold order, optionally only from ``dpu_ids``.
        Streams, so memory stays bounded however long the log is."""
        stmt = select(
            traversals.c.dpu_id, traversals.c.seq, traversals.c.ts, traversals.c.direction
        ).where(traversals.c.position <= head.position)
        if after is not None:
            stmt = stmt.where(traversals.c.ts > after)
        if dpu_ids is not None:
            stmt = stmt.where(traversals.c.dpu_id.in_(sorted(dpu_ids)))
        stmt = stmt.order_by(traversals.c.ts, traversals.c.dpu_id, traversals.c.seq)
        async with translate_errors(), self.engine.connect() as conn:
            result = await conn.stream(stmt.execution_options(yield_per=5000))
            async for partition in result.partitions():
                for row in partition:
                    yield row

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

    async def read_resets(
        self,
        space_id: str,
        *,
        after: int | None,
        until: int,
        max_id: int | None = None,
        after_id: int | None = None,
    ) -> list[StoredReset]:
        """Resets of a space with ``after < ts <= until`` (and ``after_id < id <= max_id``
        where given), in time order."""
        query = self._resets_query(
            space_id, after=after, until=until, max_id=max_id, after_id=after_id
        )
        async with read_transaction(self.engine) as conn:
            return [StoredReset(*row) for row in await conn.execute(query)]

    @staticmethod
    def _resets_query(
        space_id: str,
        *,
        after: int | None,
        until: int,
        max_id: int | None,
        after_id: int | None,
    ) -> Any:
        stmt = select(
            resets.c.id, resets.c.space_id, resets.c.ts, resets.c.count, resets.c.source
        ).where(resets.c.space_id == space_id, resets.c.ts <= until)
        if after is not None:
            stmt = stmt.where(resets.c.ts > after)
        if after_id is not None:
            stmt = stmt.where(resets.c.id > after_id)
        if max_id is not None:
            stmt = stmt.where(resets.c.id <= max_id)
        return stmt.order_by(resets.c.ts)

    # -- snapshots -------------------------------------------------------------------------

    async def snapshots_before(
        self, space_id: str, fingerprint: str, *, at_or_before: int, limit: int
    ) -> list[Snapshot]:
        """A space's snapshots under ``fingerprint`` with ``as_of <= at_or_before``, newest
        first, leaving out those a finished replay superseded. Whether each is still usable is
        for the caller to decide (late events)."""
        async with read_transaction(self.engine) as conn:
            return await self._snapshots_before(conn, space_id, fingerprint, at_or_before, limit)

    async def late_marks(
        self, sources: Sequence[Source], *, after_position: int, until: int
    ) -> list[LateMark]:
        """Traversals stored late through ``sources``, with ``ts <= until`` and a position
        after ``after_position``: the only events that can make a snapshot unusable."""
        async with read_transaction(self.engine) as conn:
            return await self._late_marks(conn, sources, after_position, until)

    async def snapshot_candidates(
        self,
        space_id: str,
        fingerprint: str,
        sources: Sequence[Source],
        *,
        at_or_before: int,
        limit: int,
        within: AsyncConnection | None = None,
    ) -> tuple[list[Snapshot], list[LateMark], list[StoredReset]]:
        """What deciding on a snapshot needs, read in one transaction: the candidates (as
        :meth:`snapshots_before`), and the late traversals and resets stored after the oldest
        candidate's head with a ``ts`` at or before the newest candidate."""
        async with self._within(within) as conn:
            found = await self._snapshots_before(conn, space_id, fingerprint, at_or_before, limit)
            if not found:
                return [], [], []
            return found, *await self._invalidating(conn, space_id, found, sources)

    async def _invalidating(
        self,
        conn: AsyncConnection,
        space_id: str,
        found: Sequence[Snapshot],
        sources: Sequence[Source],
    ) -> tuple[list[LateMark], list[StoredReset]]:
        """Late traversals and resets stored after the oldest head of ``found`` with a ``ts``
        at or before the newest of them: all that can make one of them unusable."""
        newest = max(c.as_of for c in found)
        marks = await self._late_marks(conn, sources, min(c.head.position for c in found), newest)
        rows = await conn.execute(
            self._resets_query(
                space_id,
                after=None,
                until=newest,
                max_id=None,
                after_id=min(c.head.reset_id for c in found),
            )
        )
        return marks, [StoredReset(*row) for row in rows]

    @staticmethod
    async def _snapshots_before(
        conn: AsyncConnection, space_id: str, fingerprint: str, at_or_before: int, limit: int
    ) -> list[Snapshot]:
        stmt = (
            select(snapshots)
            .where(
                snapshots.c.space_id == space_id,
                snapshots.c.fingerprint == fingerprint,
                snapshots.c.as_of <= at_or_before,
                ~_SUPERSEDED,
            )
            # By time alone, which the index gives: a tie-break on id would make PostgreSQL sort
            # every snapshot before the time (45 ms at 100,000 of them). Snapshots of one time
            # that are still right hold the same state, so any of them will do.
            .order_by(snapshots.c.as_of.desc())
            .limit(limit)
        )
        return [_snapshot(row) for row in await conn.execute(stmt)]

    @staticmethod
    async def _late_marks(
        conn: AsyncConnection, sources: Sequence[Source], after_position: int, until: int
    ) -> list[LateMark]:
        sources = tuple(sources)
        params = _source_params(sources, after=None, until=until)
        if params is None:
            return []
        params["after_position"] = after_position
        return [LateMark(*row) for row in await conn.execute(_late_through(sources), params)]

    async def add_snapshots(
        self, snapshots_: Sequence[Snapshot], sources: Sequence[Source]
    ) -> list[Snapshot]:
        """Append snapshots of one space, folded from the logs up to each one's ``head``.

        Under the exclusive log lock, any traversal or reset that reached the space after that
        head with a ``ts`` at or before a snapshot's time would make it wrong: such snapshots
        are dropped. The others are stored as covering the logs up to the head of this moment,
        so every event appended later with an earlier ``ts`` is marked late. Returns what was
        stored."""
        if not snapshots_:
            return []
        space_ids = {s.space_id for s in snapshots_}
        if len(space_ids) != 1:
            raise ValueError("add_snapshots takes snapshots of one space at a time")
        (space_id,) = space_ids
        oldest_head = Head(
            min(s.head.position for s in snapshots_), min(s.head.reset_id for s in snapshots_)
        )
        taken_at = now_ms()
        async with write_transaction(self.engine, exclusive=True) as conn:
            head = await self._head(conn)
            generation = await self._generation(conn, space_id)
            newest = max(s.as_of for s in snapshots_)
            first_unsafe = await self._first_arrival_ts(
                conn, space_id, sources, oldest_head, until=newest
            )
            keep = [s for s in snapshots_ if first_unsafe is None or s.as_of < first_unsafe]
            if keep:
                await conn.execute(
                    snapshots.insert(),
                    [_snapshot_row(s, head, taken_at, generation) for s in keep],
                )
        return [
            Snapshot(s.space_id, s.fingerprint, s.state, head, taken_at, generation) for s in keep
        ]

    @staticmethod
    async def _generation(conn: AsyncConnection, space_id: str) -> int:
        """The generation a snapshot of the space written now belongs with: its newest
        finished replay (0 before any)."""
        newest = await conn.scalar(
            select(func.max(replayed_spaces.c.replay_id)).where(
                replayed_spaces.c.space_id == space_id
            )
        )
        return int(newest or 0)

    async def has_snapshots_under_other_topologies(self, space_id: str, fingerprint: str) -> bool:
        """Whether the space has snapshots folded under another topology than ``fingerprint``
        (which are never used)."""
        async with read_transaction(self.engine) as conn:
            found = await conn.scalar(
                select(
                    exists().where(
                        snapshots.c.space_id == space_id, snapshots.c.fingerprint != fingerprint
                    )
                )
            )
        return bool(found)

    # -- replays ---------------------------------------------------------------------------

    async def begin_replay(self, topology_digest: str, *, from_ts: int | None, head: Head) -> int:
        """Record that a replay of the logs up to ``head`` starts; returns its generation,
        which the snapshots it writes carry (:meth:`add_replay_snapshots`)."""
        async with write_transaction(self.engine) as conn:
            generation = await conn.scalar(
                replays.insert()
                .values(
                    started_at=now_ms(),
                    topology_digest=topology_digest,
                    from_ts=from_ts,
                    position=head.position,
                    reset_id=head.reset_id,
                )
                .returning(replays.c.id)
            )
        return int(generation)

    async def add_replay_snapshots(self, generation: int, snapshots_: Sequence[Snapshot]) -> None:
        """Append a replay's snapshots (of any spaces), each covering the logs up to its own
        ``head``. The replay holds the store alone (see ``eventstore.lease``): nothing can have
        arrived after that head, so unlike :meth:`add_snapshots` there is nothing to check."""
        if not snapshots_:
            return
        taken_at = now_ms()
        async with write_transaction(self.engine, exclusive=True) as conn:
            for start in range(0, len(snapshots_), _CHUNK * 10):
                await conn.execute(
                    snapshots.insert(),
                    [
                        _snapshot_row(s, s.head, taken_at, generation)
                        for s in snapshots_[start : start + _CHUNK * 10]
                    ],
                )

    async def finish_replay(self, generation: int, spaces: Sequence[ReplayedSpace]) -> None:
        """Record that the replay finished these spaces, in one transaction: from now on their
        snapshots of older generations at or after each one's ``from_ts`` are superseded."""
        finished_at = now_ms()
        async with write_transaction(self.engine, exclusive=True) as conn:
            for start in range(0, len(spaces), _CHUNK * 10):
                await conn.execute(
                    replayed_spaces.insert(),
                    [
                        {
                            "replay_id": generation,
                            "space_id": r.space_id,
                            "from_ts": r.from_ts,
                            "events": r.events,
                            "snapshots": r.snapshots,
                            "finished_at": finished_at,
                        }
                        for r in spaces[start : start + _CHUNK * 10]
                    ],
                )

    async def all_snapshots(
        self, space_id: str, fingerprint: str, sources: Sequence[Source], *, head: Head
    ) -> tuple[list[Snapshot], list[LateMark], list[StoredReset]]:
        """Every snapshot of the space under ``fingerprint`` that no replay superseded and that
        covers no more than ``head``, oldest first, with what decides whether each is still
        usable (as :meth:`snapshot_candidates`). For checking them (``replay --verify``)."""
        async with read_transaction(self.engine) as conn:
            rows = await conn.execute(
                select(snapshots)
                .where(
                    snapshots.c.space_id == space_id,
                    snapshots.c.fingerprint == fingerprint,
                    snapshots.c.position <= head.position,
                    snapshots.c.reset_id <= head.reset_id,
                    ~_SUPERSEDED,
                )
                .order_by(snapshots.c.as_of, snapshots.c.id)
            )
            found = [_snapshot(row) for row in rows]
            if not found:
                return [], [], []
            return found, *await self._invalidating(conn, space_id, found, sources)

    @staticmethod
    async def _first_arrival_ts(
        conn: AsyncConnection,
        space_id: str,
        sources: Sequence[Source],
        since: Head,
        *,
        until: int,
    ) -> int | None:
        """The earliest ``ts <= until`` of anything that reached the space after ``since``."""
        candidates: list[int] = []
        sources = tuple(sources)
        params = _source_params(sources, after=None, until=until)
        if params is not None:
            params["after_position"] = since.position
            ts = await conn.scalar(_first_arrival_through(sources), params)
            if ts is not None:
                candidates.append(ts)
        ts = await conn.scalar(
            select(func.min(resets.c.ts)).where(
                resets.c.space_id == space_id,
                resets.c.id > since.reset_id,
                resets.c.ts <= until,
            )
        )
        if ts is not None:
            candidates.append(ts)
        return min(candidates, default=None)


# Statements over a space's sources are on every answer's path. Building a SQLAlchemy
# expression costs more than running the query on a small tail, so each is built once per set
# of sources, with the times as bind parameters: ``lo{i}`` (each source's lower bound),
# ``until``, and the statement's own.


def _source_params(
    sources: tuple[Source, ...], *, after: int | None, until: int
) -> dict[str, int] | None:
    """Bind parameters of :func:`_source_filter` for ``after < ts <= until``; ``None`` when
    no source can have an event in that span."""
    params = {"until": until}
    open_ = False
    for i, s in enumerate(sources):
        low = s.valid_from if after is None else max(s.valid_from, after + 1)
        params[f"lo{i}"] = low
        open_ = open_ or (low <= until and (s.valid_until is None or low < s.valid_until))
    return params if open_ else None


def _source_filter(sources: tuple[Source, ...]) -> Any:
    """Traversals of each source's DPU in its span, with ``ts`` from ``:lo{i}`` to ``:until``."""
    ts = traversals.c.ts
    clauses = []
    for i, s in enumerate(sources):
        conds = [
            traversals.c.dpu_id == s.dpu_id,
            ts >= bindparam(f"lo{i}"),
            ts <= bindparam("until"),
        ]
        if s.valid_until is not None:
            conds.append(ts < s.valid_until)
        clauses.append(and_(*conds))
    return or_(*clauses)


@lru_cache(maxsize=4096)
def _traversals_through(sources: tuple[Source, ...], bounded: bool, rest: bool) -> Any:
    """Traversals in fold order: the first page, or (``rest``) all after
    ``(:key_ts, :key_dpu, :key_seq)``, streamed."""
    key = (traversals.c.ts, traversals.c.dpu_id, traversals.c.seq)
    stmt = select(
        traversals.c.dpu_id, traversals.c.seq, traversals.c.ts, traversals.c.direction
    ).where(_source_filter(sources))
    if bounded:
        stmt = stmt.where(traversals.c.position <= bindparam("max_position"))
    if not rest:
        return stmt.order_by(*key).limit(_TAIL_PAGE)
    last: tuple[Any, ...] = (bindparam("key_ts"), bindparam("key_dpu"), bindparam("key_seq"))
    return stmt.where(tuple_(*key) > tuple_(*last)).order_by(*key).execution_options(yield_per=2000)


@lru_cache(maxsize=4096)
def _late_through(sources: tuple[Source, ...]) -> Any:
    return select(traversals.c.dpu_id, traversals.c.ts, traversals.c.position).where(
        _source_filter(sources), LATE, traversals.c.position > bindparam("after_position")
    )


@lru_cache(maxsize=4096)
def _first_arrival_through(sources: tuple[Source, ...]) -> Any:
    return select(func.min(traversals.c.ts)).where(
        _source_filter(sources), traversals.c.position > bindparam("after_position")
    )


def _source_at(sources: list[Source], ts: int) -> Source:
    for s in sources:
        if s.valid_from <= ts and (s.valid_until is None or ts < s.valid_until):
            return s
    raise LookupError(f"no source of DPU {sources[0].dpu_id!r} covers {ts}")


def _snapshot_row(s: Snapshot, head: Head, taken_at: int, generation: int) -> dict[str, Any]:
    return {
        "space_id": s.space_id,
        "fingerprint": s.fingerprint,
        "as_of": s.as_of,
        "count": s.state.count,
        "entrances": s.state.entrances,
        "exits": s.state.exits,
        "position": head.position,
        "reset_id": head.reset_id,
        "taken_at": taken_at,
        "generation": generation,
    }


def _snapshot(row: Any) -> Snapshot:
    return Snapshot(
        space_id=row.space_id,
        fingerprint=row.fingerprint,
        state=SpaceState(row.as_of, row.count, row.entrances, row.exits),
        head=Head(row.position, row.reset_id),
        taken_at=row.taken_at,
        generation=row.generation,
    )


#: A snapshot that a finished replay of its space superseded: the replay is of a newer
#: generation and started folding at or before the snapshot's time.
_SUPERSEDED = exists().where(
    replayed_spaces.c.space_id == snapshots.c.space_id,
    replayed_spaces.c.replay_id > snapshots.c.generation,
    or_(replayed_spaces.c.from_ts.is_(None), replayed_spaces.c.from_ts <= snapshots.c.as_of),
)
