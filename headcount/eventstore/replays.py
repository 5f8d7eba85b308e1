"""Replay generations: a replay's snapshots are a new generation, and a finished replay
supersedes its spaces' older snapshots (still stored, never used again)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from headcount.clock import Clock, now_ms
from headcount.domain.rollups import Rollup
from headcount.eventstore.engine import write_transaction
from headcount.eventstore.records import Head, ReplayedSpace, Snapshot
from headcount.eventstore.rollups import insert_rollups, rollup_rows
from headcount.eventstore.schema import replayed_spaces, replays
from headcount.eventstore.statements import CHUNK, insert_tuples

__all__ = ["Replays"]

#: Rows per INSERT when a replay writes many.
_ROWS = CHUNK * 10
#: The columns of a snapshot's row, in the order :meth:`Replays._insert_snapshots` gives them.
_SNAPSHOT_COLUMNS = (
    "space_id", "fingerprint", "as_of", "count", "entrances", "exits", "position", "reset_id",
    "taken_at", "generation",
)  # fmt: skip


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
        async with write_transaction(self.engine, exclusive=True) as conn:
            await self._insert_snapshots(conn, generation, written)

    async def _insert_snapshots(
        self, conn: AsyncConnection, generation: int, written: Sequence[Snapshot]
    ) -> None:
        taken_at = self._clock()
        await insert_tuples(
            conn,
            "snapshots",
            _SNAPSHOT_COLUMNS,
            [
                (s.space_id, s.fingerprint, s.state.as_of, s.state.count, s.state.entrances,
                 s.state.exits, s.head.position, s.head.reset_id, taken_at, generation)
                for s in written
            ],
        )  # fmt: skip

    async def finish(
        self,
        generation: int,
        spaces: Sequence[ReplayedSpace],
        *,
        head: Head,
        written: Sequence[Snapshot] = (),
        rollups: Sequence[tuple[str, str, Sequence[Rollup]]] = (),
    ) -> None:
        """Record that the replay finished these spaces, with its last snapshots, ``written`` (as
        :meth:`add_snapshots`) and its ``rollups`` (``(space_id, fingerprint, rollups)`` for
        each space, folded from the logs up to ``head``), in one transaction: from now on
        their snapshots of older generations at or after each one's ``from_ts`` are
        superseded. One commit, not one for each: each waits for the disk."""
        rows = [
            row
            for space_id, fingerprint, rollups_made in rollups
            for row in rollup_rows(space_id, fingerprint, rollups_made, head, generation)
        ]
        finished_at = self._clock()
        async with write_transaction(self.engine, exclusive=True) as conn:
            if written:
                await self._insert_snapshots(conn, generation, written)
            if rows:
                await insert_rollups(conn, rows)
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
