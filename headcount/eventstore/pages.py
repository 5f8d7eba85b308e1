"""Keyset pages of a space's log: the keys of the traversals and resets next to a cursor.

A page of events (``history.timeline``) first learns which events it holds, here, by their
fold order key ``(ts, rank, dpu_id, seq)`` (see ``domain.events.fold_key``), then folds the
span they cover. Each source of the space is asked on its own, for at most ``limit`` keys
beyond the cursor, by the ``(dpu_id, ts)`` index: a page costs the same near the start of a
long window as at its end.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection

from headcount.domain.events import RESET_RANK, TRAVERSAL_RANK
from headcount.domain.topology import Source
from headcount.eventstore.schema import resets, traversals

__all__ = ["Key", "page_keys"]

#: An event's place in fold order: ``(ts, rank, dpu_id, seq)``; a reset's is
#: ``(ts, RESET_RANK, "", 0)`` (one reset per space and millisecond).
Key = tuple[int, int, str, int]


async def page_keys(
    conn: AsyncConnection,
    space_id: str,
    sources: Sequence[Source],
    *,
    start: int,
    end: int,
    beyond: Key | None,
    descending: bool,
    limit: int,
) -> list[Key]:
    """The keys of the space's stored events with ``start <= ts < end``, beyond the cursor
    ``beyond`` (after it ascending, before it ``descending``), nearest it first: at most
    ``limit`` of them. Traversals through each source count in that source's span only."""
    found: list[Key] = []
    for source in sources:
        low, high = max(start, source.valid_from), end
        if source.valid_until is not None:
            high = min(high, source.valid_until)
        if low >= high:
            continue
        stmt = select(traversals.c.ts, traversals.c.seq).where(
            traversals.c.dpu_id == source.dpu_id, traversals.c.ts >= low, traversals.c.ts < high
        )
        if beyond is not None:
            stmt = stmt.where(
                _beyond(
                    (TRAVERSAL_RANK, source.dpu_id),
                    beyond,
                    descending,
                    traversals.c.ts,
                    traversals.c.seq,
                )
            )
        order = (traversals.c.ts, traversals.c.seq)
        stmt = stmt.order_by(*(c.desc() for c in order) if descending else order).limit(limit)
        found += [(ts, TRAVERSAL_RANK, source.dpu_id, seq) for ts, seq in await conn.execute(stmt)]
    stmt = select(resets.c.ts).where(
        resets.c.space_id == space_id, resets.c.ts >= start, resets.c.ts < end
    )
    if beyond is not None:
        stmt = stmt.where(_beyond((RESET_RANK, ""), beyond, descending, resets.c.ts, None))
    stmt = stmt.order_by(resets.c.ts.desc() if descending else resets.c.ts).limit(limit)
    found += [(ts, RESET_RANK, "", 0) for ts in await conn.scalars(stmt)]
    return sorted(set(found), reverse=descending)[:limit]


def _beyond(
    prefix: tuple[int, str], cursor: Key, descending: bool, ts: Any, seq: Any | None
) -> Any:
    """The condition on ``(ts, seq)`` for rows whose keys are ``(ts, *prefix, seq)`` to lie
    beyond ``cursor``. Rows of another ``prefix`` than the cursor's sit wholly before or
    after it within its millisecond."""
    cursor_ts, cursor_prefix, cursor_seq = cursor[0], (cursor[1], cursor[2]), cursor[3]
    if prefix != cursor_prefix:
        later = prefix > cursor_prefix  # the rows of cursor_ts come after the cursor
        if descending:
            return ts < cursor_ts if later else ts <= cursor_ts
        return ts >= cursor_ts if later else ts > cursor_ts
    if seq is None:
        return ts < cursor_ts if descending else ts > cursor_ts
    row, mark = tuple_(ts, seq), tuple_(cursor_ts, cursor_seq)
    return row < mark if descending else row > mark
