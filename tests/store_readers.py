"""Readers of the store that only tests need: they look at rows the service itself reads only
through the answers it folds."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select

from headcount.domain.topology import Source
from headcount.eventstore.engine import read_transaction
from headcount.eventstore.records import LateMark, QuarantineEntry, Snapshot, StoredReset
from headcount.eventstore.schema import quarantine
from headcount.eventstore.snapshots import candidates_before
from headcount.eventstore.statements import late_through, resets_query, source_params
from headcount.eventstore.store import EventStore


async def quarantined(store: EventStore, *, limit: int = 100) -> list[QuarantineEntry]:
    """The newest quarantined entries, newest first."""
    async with read_transaction(store.engine) as conn:
        rows = await conn.execute(select(quarantine).order_by(quarantine.c.id.desc()).limit(limit))
        return [QuarantineEntry(r.origin, r.reason, r.payload, r.received_at) for r in rows]


async def read_resets(
    store: EventStore,
    space_id: str,
    *,
    after: int | None,
    until: int,
    max_id: int | None = None,
    after_id: int | None = None,
) -> list[StoredReset]:
    """Resets of a space with ``after < ts <= until`` (and ``after_id < id <= max_id`` where
    given), in time order."""
    query = resets_query(space_id, after=after, until=until, max_id=max_id, after_id=after_id)
    async with read_transaction(store.engine) as conn:
        return [StoredReset(*row) for row in await conn.execute(query)]


async def snapshots_before(
    store: EventStore, space_id: str, fingerprint: str, *, at_or_before: int, limit: int
) -> list[Snapshot]:
    """A space's snapshots under ``fingerprint`` with ``as_of <= at_or_before``, newest first,
    leaving out those a finished replay superseded, usable or not."""
    async with read_transaction(store.engine) as conn:
        return await candidates_before(conn, space_id, fingerprint, at_or_before, limit)


async def late_marks(
    store: EventStore, sources: Sequence[Source], *, after_position: int, until: int
) -> list[LateMark]:
    """Traversals stored late through ``sources``, with ``ts <= until`` and a position after
    ``after_position``."""
    params = source_params(tuple(sources), after=None, until=until)
    if params is None:
        return []
    params["after_position"] = after_position
    async with read_transaction(store.engine) as conn:
        rows = await conn.execute(late_through(tuple(sources)), params)
        return [LateMark(*row) for row in rows]
