"""What the log says about the sensors themselves (``EventStore.sensors``): a DPU's gaps in
``seq``, and a doorway's traffic by direction, by hour, and its newest event.

Each question is one aggregate statement, built once (per set of sources) and cached, with the
times as bind parameters; the store sends back a handful of numbers, never the rows. Every
statement reads a range of the ``(dpu_id, ts)`` index, so its cost is the DPU's or doorway's
events in the span asked about, whatever the size of the log.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from sqlalchemy import bindparam, case, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from headcount.domain.topology import Source
from headcount.eventstore.engine import read_transaction
from headcount.eventstore.schema import traversals
from headcount.eventstore.statements import _source_filter, source_params

__all__ = ["HOUR_MS", "SensorReads", "SeqGaps"]

#: The width of the bins :meth:`SensorReads.hourly` counts in.
HOUR_MS = 3_600_000


@dataclass(frozen=True, slots=True)
class SeqGaps:
    """A DPU's stored traversals in a span, in ``seq`` order: ``stored`` of them, seqs from
    ``first`` to ``last``; ``gaps`` places where the next stored seq jumps by more than one,
    ``missing`` the seqs those jumps skip (reports lost, or refused)."""

    stored: int
    first: int | None
    last: int | None
    gaps: int
    missing: int


class SensorReads:
    """The sensor-health questions, asked of an open store."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def seq_gaps(self, dpu_id: str, *, after: int, until: int) -> SeqGaps:
        """Gaps in ``seq`` between consecutive stored traversals of ``dpu_id`` with
        ``after < ts <= until``."""
        params = {"dpu_id": dpu_id, "after": after, "until": until}
        async with read_transaction(self.engine) as conn:
            stored, first, last, gaps, missing = (await conn.execute(_gaps(), params)).one()
        return SeqGaps(int(stored), first, last, int(gaps or 0), int(missing or 0))

    async def directions(
        self, sources: tuple[Source, ...], *, after: int, until: int
    ) -> tuple[int, int]:
        """Traversals through ``sources`` with ``after < ts <= until``: how many went toward
        their DPU (direction +1) and how many away (-1)."""
        params = source_params(sources, after=after, until=until)
        if params is None:
            return 0, 0
        async with read_transaction(self.engine) as conn:
            found = dict((await conn.execute(_directions(sources), params)).all())
        return int(found.get(1, 0)), int(found.get(-1, 0))

    async def hourly(
        self, sources: tuple[Source, ...], *, after: int, until: int
    ) -> dict[int, int]:
        """Traversals through ``sources`` with ``after < ts <= until`` by hour: ``{h: n}``, ``n``
        of them with ``h * HOUR_MS <= ts < (h + 1) * HOUR_MS``; hours without any are left out."""
        params = source_params(sources, after=after, until=until)
        if params is None:
            return {}
        async with read_transaction(self.engine) as conn:
            rows = await conn.execute(_hourly(sources), params)
            return {int(hour): int(n) for hour, n in rows}

    async def newest(self, sources: tuple[Source, ...], *, until: int) -> int | None:
        """The newest ``ts`` at or before ``until`` of a traversal through ``sources``."""
        params = source_params(sources, after=None, until=until)
        if params is None:
            return None
        async with read_transaction(self.engine) as conn:
            newest = await conn.scalar(_newest(sources), params)
        return None if newest is None else int(newest)


@lru_cache(maxsize=1)
def _gaps() -> Any:
    t = traversals.c
    ordered = (
        select(t.seq, func.lag(t.seq).over(order_by=t.seq).label("prev"))
        .where(t.dpu_id == bindparam("dpu_id"), t.ts > bindparam("after"))
        .where(t.ts <= bindparam("until"))
        .subquery()
    )
    jump = ordered.c.seq - ordered.c.prev
    return select(
        func.count(),
        func.min(ordered.c.seq),
        func.max(ordered.c.seq),
        func.sum(case((jump > 1, 1), else_=0)),
        func.sum(case((jump > 1, jump - 1), else_=0)),
    )


@lru_cache(maxsize=4096)
def _directions(sources: tuple[Source, ...]) -> Any:
    d = traversals.c.direction
    return select(d, func.count()).where(_source_filter(sources)).group_by(d)


@lru_cache(maxsize=4096)
def _hourly(sources: tuple[Source, ...]) -> Any:
    # Integer division on both backends (the column and the literal are integers); timestamps
    # are after 1970, so it rounds down.
    hour = (traversals.c.ts // HOUR_MS).label("hour")
    return select(hour, func.count()).where(_source_filter(sources)).group_by(hour)


@lru_cache(maxsize=4096)
def _newest(sources: tuple[Source, ...]) -> Any:
    return select(func.max(traversals.c.ts)).where(_source_filter(sources))
