"""Snapshots: a space's folded state at a time, appended so past answers need no full replay.

Derived and disposable, never the truth. This module is the one place that decides whether a
snapshot may be used (:func:`still_right`): folded under the topology asked about, not
superseded by a replay, and with no event stored after it that belongs before it. Rows are
never edited: a late event makes snapshots unusable by being in the log.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import exists, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from headcount.clock import Clock, now_ms
from headcount.domain.fold import SpaceState
from headcount.domain.topology import Source
from headcount.eventstore.engine import read_transaction, write_transaction
from headcount.eventstore.engine import within as reading_in
from headcount.eventstore.log import read_head
from headcount.eventstore.records import Head, LateMark, RolledUp, Snapshot, StoredReset
from headcount.eventstore.rollups import insert_rollups, rollup_rows, rollups_end
from headcount.eventstore.schema import replayed_spaces, resets, snapshots
from headcount.eventstore.statements import (
    first_arrival_through,
    late_through,
    resets_query,
    source_params,
)

__all__ = [
    "SUPERSEDED",
    "Snapshots",
    "candidates_before",
    "snapshot_from_row",
    "snapshot_row",
    "still_right",
]

#: How many snapshot candidates one look-up reads.
_PAGE = 32

#: A snapshot that a finished replay of its space superseded: the replay is of a newer
#: generation and started folding at or before the snapshot's time.
SUPERSEDED = exists().where(
    replayed_spaces.c.space_id == snapshots.c.space_id,
    replayed_spaces.c.replay_id > snapshots.c.generation,
    or_(replayed_spaces.c.from_ts.is_(None), replayed_spaces.c.from_ts <= snapshots.c.as_of),
)


def still_right(
    snapshot: Snapshot, marks: Iterable[LateMark], found: Iterable[StoredReset]
) -> bool:
    """Whether no traversal (``marks``) or reset (``found``) stored after the snapshot was
    written belongs at or before its time: otherwise it misses that event and must not be
    used."""
    return not any(
        m.ts <= snapshot.as_of and m.position > snapshot.head.position for m in marks
    ) and not any(r.ts <= snapshot.as_of and r.id > snapshot.head.reset_id for r in found)


class Snapshots:
    """A store's snapshots (``EventStore.snapshots``)."""

    def __init__(self, engine: AsyncEngine, *, clock: Clock = now_ms) -> None:
        self.engine = engine
        self._clock = clock

    async def newest_usable(
        self,
        space_id: str,
        fingerprint: str,
        sources: Sequence[Source],
        *,
        at_or_before: int,
        within: AsyncConnection | None = None,
    ) -> Snapshot | None:
        """The newest snapshot of the space at or before a time that may be used: folded
        under ``fingerprint``, not superseded, and :func:`still_right`. ``within``: a read
        transaction to read in (``EventLog.reading``)."""
        before = at_or_before
        async with reading_in(self.engine, within) as conn:
            while True:
                found = await candidates_before(conn, space_id, fingerprint, before, _PAGE)
                if not found:
                    return None
                marks, found_resets = await _invalidating(conn, space_id, found, sources)
                for candidate in found:
                    if still_right(candidate, marks, found_resets):
                        return candidate
                if len(found) < _PAGE:
                    return None
                before = found[-1].as_of - 1

    async def usable(
        self, space_id: str, fingerprint: str, sources: Sequence[Source], *, head: Head
    ) -> list[Snapshot]:
        """Every snapshot of the space that an answer could use, covering no more than
        ``head``, oldest first. For checking them against a fold (``replay --verify``)."""
        async with read_transaction(self.engine) as conn:
            rows = await conn.execute(
                select(snapshots)
                .where(
                    snapshots.c.space_id == space_id,
                    snapshots.c.fingerprint == fingerprint,
                    snapshots.c.position <= head.position,
                    snapshots.c.reset_id <= head.reset_id,
                    ~SUPERSEDED,
                )
                .order_by(snapshots.c.as_of, snapshots.c.id)
            )
            found = [snapshot_from_row(row) for row in rows]
            if not found:
                return []
            marks, found_resets = await _invalidating(conn, space_id, found, sources)
        return [s for s in found if still_right(s, marks, found_resets)]

    async def taken_at(self, as_of: int, fingerprints: Mapping[str, str]) -> dict[str, Snapshot]:
        """Of each space of ``fingerprints``, its newest snapshot taken exactly at ``as_of``
        under its fingerprint and not superseded, in one statement. For the snapshots that
        ``partitions detach`` writes at the boundary of a closed log, which no event can make
        unusable (the store refuses every event before the boundary)."""
        found: dict[str, Snapshot] = {}
        async with read_transaction(self.engine) as conn:
            rows = await conn.execute(
                select(snapshots)
                .where(snapshots.c.as_of == as_of, ~SUPERSEDED)
                .order_by(snapshots.c.id)
            )
            for row in rows:
                if fingerprints.get(row.space_id) == row.fingerprint:
                    found[row.space_id] = snapshot_from_row(row)
        return found

    async def under_other_topologies(self, space_id: str, fingerprint: str) -> bool:
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

    async def rollups_end(
        self, space_id: str, fingerprint: str, *, within: AsyncConnection | None = None
    ) -> int | None:
        """Where the space's rollups under ``fingerprint`` end (``eventstore.rollups``)."""
        async with reading_in(self.engine, within) as conn:
            return await rollups_end(conn, space_id, fingerprint)

    async def add(
        self,
        taken: Sequence[Snapshot],
        sources: Sequence[Source],
        *,
        made: RolledUp | None = None,
    ) -> list[Snapshot]:
        """Append snapshots of one space, folded from the logs up to each one's ``head``, and
        the rollups ``made`` in the same fold.

        Under the exclusive log lock, any traversal or reset that reached the space after that
        head with a ``ts`` at or before a snapshot's time would make it wrong: such snapshots
        are dropped, and so are rollups that end after it. The others are stored as covering
        the logs up to the head of this moment, so every event appended later with an earlier
        ``ts`` is marked late. Rollups are stored only up to the newest snapshot of the space
        (stored before or now): an event that arrives later in their time is marked late by
        it, and so makes them unusable. Returns the snapshots stored."""
        rolled = () if made is None else made.rollups
        if not taken and not rolled:
            return []
        space_ids = {s.space_id for s in taken} | ({made.space_id} if made else set())
        if len(space_ids) != 1:
            raise ValueError("Snapshots.add takes snapshots of one space at a time")
        (space_id,) = space_ids
        heads = [s.head for s in taken] + ([made.head] if made and rolled else [])
        oldest_head = Head(min(h.position for h in heads), min(h.reset_id for h in heads))
        taken_at = self._clock()
        async with write_transaction(self.engine, exclusive=True) as conn:
            head = await read_head(conn)
            generation = await _generation(conn, space_id)
            newest = max([s.as_of for s in taken] + [r.end - 1 for r in rolled])
            first_unsafe = await _first_arrival_ts(
                conn, space_id, sources, oldest_head, until=newest
            )
            keep = [s for s in taken if first_unsafe is None or s.as_of < first_unsafe]
            if keep:
                await conn.execute(
                    snapshots.insert(),
                    [snapshot_row(s, head, taken_at, generation) for s in keep],
                )
            if made is not None and rolled:
                covered = max([s.as_of for s in keep] + [made.covered])
                safe = [
                    r
                    for r in rolled
                    if r.end - 1 <= covered and (first_unsafe is None or r.end <= first_unsafe)
                ]
                await insert_rollups(
                    conn, rollup_rows(space_id, made.fingerprint, safe, head, generation)
                )
        return [
            Snapshot(s.space_id, s.fingerprint, s.state, head, taken_at, generation) for s in keep
        ]


async def candidates_before(
    conn: AsyncConnection, space_id: str, fingerprint: str, at_or_before: int, limit: int
) -> list[Snapshot]:
    """A space's snapshots under ``fingerprint`` with ``as_of <= at_or_before``, newest first,
    leaving out those a finished replay superseded; whether each is :func:`still_right` is
    the caller's to decide."""
    stmt = (
        select(snapshots)
        .where(
            snapshots.c.space_id == space_id,
            snapshots.c.fingerprint == fingerprint,
            snapshots.c.as_of <= at_or_before,
            ~SUPERSEDED,
        )
        # By time alone, which the index gives: a tie-break on id would make PostgreSQL sort
        # every snapshot before the time (45 ms at 100,000 of them). Snapshots of one time
        # that are still right hold the same state, so any of them will do.
        .order_by(snapshots.c.as_of.desc())
        .limit(limit)
    )
    return [snapshot_from_row(row) for row in await conn.execute(stmt)]


async def _invalidating(
    conn: AsyncConnection, space_id: str, found: Sequence[Snapshot], sources: Sequence[Source]
) -> tuple[list[LateMark], list[StoredReset]]:
    """Late traversals and resets stored after the oldest head of ``found`` with a ``ts`` at
    or before the newest of them: all that can make one of them unusable."""
    newest = max(c.as_of for c in found)
    marks: list[LateMark] = []
    params = source_params(tuple(sources), after=None, until=newest)
    if params is not None:
        params["after_position"] = min(c.head.position for c in found)
        rows = await conn.execute(late_through(tuple(sources)), params)
        marks = [LateMark(*row) for row in rows]
    found_resets = await conn.execute(
        resets_query(
            space_id,
            after=None,
            until=newest,
            max_id=None,
            after_id=min(c.head.reset_id for c in found),
        )
    )
    return marks, [StoredReset(*row) for row in found_resets]


async def _generation(conn: AsyncConnection, space_id: str) -> int:
    """The generation a snapshot of the space written now belongs with: its newest finished
    replay (0 before any)."""
    newest = await conn.scalar(
        select(func.max(replayed_spaces.c.replay_id)).where(replayed_spaces.c.space_id == space_id)
    )
    return int(newest or 0)


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
    params = source_params(tuple(sources), after=None, until=until)
    if params is not None:
        params["after_position"] = since.position
        ts = await conn.scalar(first_arrival_through(tuple(sources)), params)
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


def snapshot_row(s: Snapshot, head: Head, taken_at: int, generation: int) -> dict[str, Any]:
    """The row that stores ``s`` as covering the logs up to ``head``."""
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


def snapshot_from_row(row: Any) -> Snapshot:
    """A stored snapshot row as a :class:`Snapshot`."""
    return Snapshot(
        space_id=row.space_id,
        fingerprint=row.fingerprint,
        state=SpaceState(row.as_of, row.count, row.entrances, row.exits),
        head=Head(row.position, row.reset_id),
        taken_at=row.taken_at,
        generation=row.generation,
    )
