"""Topology documents: the store remembers the topology it was used with, so a command run
without a topology file answers under the one the data was stored with."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from headcount.clock import Clock, now_ms
from headcount.domain.topology import document_digest
from headcount.eventstore.engine import read_transaction, write_transaction
from headcount.eventstore.schema import topologies

__all__ = ["Topologies"]


class Topologies:
    """A store's topology documents, newest current (``EventStore.topologies``)."""

    def __init__(self, engine: AsyncEngine, *, clock: Clock = now_ms) -> None:
        self.engine = engine
        self._clock = clock

    async def record(self, document: str, *, origin: str) -> bool:
        """Make ``document`` (topology TOML) the store's current topology. Returns whether it
        differs from the current one (an unchanged topology is not recorded again)."""
        digest = document_digest(document)
        async with write_transaction(self.engine) as conn:
            current = await conn.scalar(
                select(topologies.c.digest).order_by(topologies.c.id.desc()).limit(1)
            )
            if current == digest:
                return False
            await conn.execute(
                topologies.insert().values(
                    digest=digest, document=document, origin=origin, recorded_at=self._clock()
                )
            )
        return True

    async def current(self) -> tuple[str, str] | None:
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
