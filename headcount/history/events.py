"""A space's events, read from the store in fold order."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncConnection

from headcount.domain.events import Delta, Reset, SpaceEvent, space_delta
from headcount.domain.topology import Source, Topology
from headcount.eventstore.records import Head, StoredReset
from headcount.eventstore.store import EventStore


@dataclass(frozen=True, slots=True)
class SpaceView:
    """What decides one space's fold under a topology: the space, its sources and the
    fingerprint that snapshots folded under them carry."""

    space_id: str
    sources: tuple[Source, ...]
    fingerprint: str

    @classmethod
    def of(cls, topology: Topology, space_id: str) -> SpaceView:
        return cls(space_id, topology.sources(space_id), topology.fingerprint(space_id))


async def space_events(
    store: EventStore,
    view: SpaceView,
    *,
    after: int | None,
    until: int,
    head: Head | None = None,
    within: AsyncConnection | None = None,
) -> AsyncIterator[SpaceEvent]:
    """Every event touching the space with ``after < ts <= until`` (up to ``head`` in the logs
    when given), as deltas and resets in fold order; ``within`` a transaction of
    ``EventLog.reading``, if given."""
    async for item in store.log.space_log(
        view.space_id, view.sources, after=after, until=until, head=head, within=within
    ):
        if isinstance(item, StoredReset):
            yield Reset(item.space_id, item.ts, item.count, item.source)
            continue
        traversal, source = item
        yield Delta(
            traversal.ts,
            traversal.dpu_id,
            traversal.seq,
            space_delta(traversal.direction, source.sensor_placement),
        )
