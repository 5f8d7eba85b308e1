"""Replay generations: a replay's snapshots are a new generation, and a finished replay
supersedes its spaces' older snapshots (still stored, never used again)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncEngine

from headcount.clock import Clock, now_ms
from headcount.domain.rollups import Rollup
from headcount.eventstore.engine import write_transaction
from headcount.eventstore.records import Head, ReplayedSpace, Snapshot
from headcount.eventstore.rollups import insert_rollups, rollup_rows
from headcount.eventstore.schema import replayed_spaces, replays, snapshots
from headcount.eventstore.snapshots import snapshot_row
from headcount.eventstore.statements import CHUNK

__all__ = ["Replays"]

#: Rows per INSERT when a replay writes many.
_ROWS = CHUNK * 10


class Replays:
    """A store's replay generations (``EventStore.replays``)."""

    def __init__(self, engine: AsyncEngine, *, clock: Clock = now_ms) -> None:
        self.engine = engine
        self._clock = clock

    async def begin(self, topology_digest: str, *, from_ts: int | None, head: Head) -> int:
        """Record that a replay of the logs up to ``head`` starts; returns its generation,
        which the snapshots it writes carry (:meth:`add_snapshots`)."""
        async with write_transaction(self.engine) as conn:
            generation = await conn.scalar(
                replays.insert()
                .values(
                    started_at=self._clock(),
                    topology_digest=topology_digest,
                    from_ts=from_ts,
                    position=head.position,
                    reset_id=head.reset_id,
                )
                .returning(replays.c.id)
            )
        return int(generation)

    async def add_snapshots(self, generation: int, written: Sequence[Snapshot]) -> None:
        """Append a replay's snapshots (of any spaces), each covering the logs up to its own
        ``head``. The replay holds the store alone (see ``eventstore.lease``): nothing can have
        arrived after that head, so unlike ``Snapshots.add`` there is nothing to check."""
        if not written:
            return
        taken_at = self._clock()
        async with write_transaction(self.engine, exclusive=True) as conn:
            for start in range(0, len(written), _ROWS):
                await conn.execute(
                    snapshots.insert(),
                    [
                        snapshot_row(s, s.head, taken_at, generation)
                        for s in written[start : start + _ROWS]
                    ],
                )

    async def add_rollups(
        self,
        generation: int,
        made: Sequence[tuple[str, str, Sequence[Rollup]]],
        head: Head,
    ) -> None:
        """Append a replay's rollups (``(space_id, fingerprint, rollups)`` for each space),
        folded from the logs up to ``head``; each space's end at its newest snapshot of this
        replay, so that a later event in their time is marked late (``Snapshots.add``)."""
        rows = [
            row
            for space_id, fingerprint, rollups_made in made
            for row in rollup_rows(space_id, fingerprint, rollups_made, head, generation)
        ]
        if not rows:
            return
        async with write_transaction(self.engine, exclusive=True) as conn:
            await insert_rollups(conn, rows)

    async def finish(self, generation: int, spaces: Sequence[ReplayedSpace]) -> None:
        """Record that the replay finished these spaces, in one transaction: from now on their
        snapshots of older generations at or after each one's ``from_ts`` are superseded."""
        finished_at = self._clock()
        async with write_transaction(self.engine, exclusive=True) as conn:
            for start in range(0, len(spaces), _ROWS):
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
                        for r in spaces[start : start + _ROWS]
                    ],
                )
