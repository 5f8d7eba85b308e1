"""A space's events, read from the store in fold order."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from headcount.domain.events import Delta, Reset, SpaceEvent, fold_key
from headcount.domain.topology import Source, Topology
from headcount.eventstore.records import Head
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
) -> AsyncIterator[SpaceEvent]:
    """Every event touching the space with ``after < ts <= until`` (up to ``head`` in the logs
    when given), as deltas and resets in fold order."""
    pending: list[Reset] = [
        Reset(r.space_id, r.ts, r.count, r.source)
        for r in await store.read_resets(
            view.space_id,
            after=after,
            until=until,
            max_id=None if head is None else head.reset_id,
        )
    ]
    pending.sort(key=fold_key, reverse=True)
    async for traversal, source in store.stream_traversals(
        view.sources,
        after=after,
        until=until,
        max_position=None if head is None else head.position,
    ):
        delta = Delta(
            traversal.ts,
            traversal.dpu_id,
            traversal.seq,
            1 if traversal.direction * source.sensor_placement > 0 else -1,
        )
        key = fold_key(delta)
        while pending and fold_key(pending[-1]) < key:
            yield pending.pop()
        yield delta
    while pending:
        yield pending.pop()
