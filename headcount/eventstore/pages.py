"""Keyset pages of a space's log: the keys of the traversals and resets next to a cursor.

A page of events (``history.timeline``) first learns which events it holds, here, by their
fold order key ``(ts, rank, dpu_id, seq)`` (see ``domain.events.fold_key``), then folds the
span they cover. Each source of the space is asked for at most ``limit`` keys beyond the
cursor by the ``(dpu_id, ts)`` index, all in one statement: a page costs the same near the
start of a long window as at its end.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any, Literal

from sqlalchemy import bindparam, literal, select, tuple_, union_all
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
    ``limit`` of them. Traversals through each source count in that source's span only. One
    statement (cached by its shape), one round trip."""
    open_ = tuple(s for s in sources if _span(s, start, end) is not None)
    sides = tuple(_side((TRAVERSAL_RANK, s.dpu_id), beyond) for s in open_)
    stmt = _statement(open_, descending, sides, _side((RESET_RANK, ""), beyond))
    params: dict[str, Any] = {"space_id": space_id, "start": start, "end": end, "limit": limit}
    if beyond is not None:
        params |= {"cursor_ts": beyond[0], "cursor_seq": beyond[3]}
    for i, source in enumerate(open_):
        params[f"lo{i}"], params[f"hi{i}"] = _span(source, start, end) or (0, 0)
    found: list[Key] = []
    for kind, dpu_index, ts, seq in await conn.execute(stmt, params):
        if kind == TRAVERSAL_RANK:
            found.append((ts, TRAVERSAL_RANK, open_[dpu_index].dpu_id, seq))
        else:
            found.append((ts, RESET_RANK, "", 0))
    return sorted(set(found), reverse=descending)[:limit]


def _span(source: Source, start: int, end: int) -> tuple[int, int] | None:
    """``[low, high)``: where the source's span meets the window, ``None`` when it does not."""
    low, high = max(start, source.valid_from), end
    if source.valid_until is not None:
        high = min(high, source.valid_until)
    return (low, high) if low < high else None


#: How rows of one key prefix ``(rank, dpu_id)`` lie against a cursor's: wholly after it in
#: its millisecond, wholly before it, or the same prefix (then ``(ts, seq)`` decides).
Side = Literal["none", "later", "earlier", "same"]


def _side(prefix: tuple[int, str], cursor: Key | None) -> Side:
    if cursor is None:
        return "none"
    mark = (cursor[1], cursor[2])
    return "same" if prefix == mark else "later" if prefix > mark else "earlier"


@lru_cache(maxsize=1024)
def _statement(
    sources: tuple[Source, ...], descending: bool, sides: tuple[Side, ...], reset_side: Side
) -> Any:
    """``(kind, source index, ts, seq)`` of the nearest ``:limit`` rows of each source and of
    the resets, in one ``UNION ALL``; each part reads its own index range."""
    parts = []
    for i, (source, side) in enumerate(zip(sources, sides, strict=True)):
        ts, seq = traversals.c.ts, traversals.c.seq
        stmt = select(
            literal(TRAVERSAL_RANK).label("kind"), literal(i).label("source"), ts, seq
        ).where(
            traversals.c.dpu_id == source.dpu_id,
            ts >= bindparam(f"lo{i}"),
            ts < bindparam(f"hi{i}"),
        )
        if side != "none":
            stmt = stmt.where(_beyond(side, descending, ts, seq))
        order = (ts.desc(), seq.desc()) if descending else (ts, seq)
        parts.append(stmt.order_by(*order).limit(bindparam("limit")).subquery().select())
    ts = resets.c.ts
    stmt = select(
        literal(RESET_RANK).label("kind"), literal(-1).label("source"), ts, literal(0).label("seq")
    ).where(
        resets.c.space_id == bindparam("space_id"), ts >= bindparam("start"), ts < bindparam("end")
    )
    if reset_side != "none":
        stmt = stmt.where(_beyond(reset_side, descending, ts, None))
    stmt = stmt.order_by(ts.desc() if descending else ts).limit(bindparam("limit"))
    parts.append(stmt.subquery().select())
    return union_all(*parts)


def _beyond(side: Side, descending: bool, ts: Any, seq: Any | None) -> Any:
    """The condition on ``(ts, seq)`` for rows on ``side`` of the cursor to lie beyond it."""
    cursor_ts: Any = bindparam("cursor_ts")
    if side == "later":  # the rows of the cursor's millisecond come after the cursor
        return ts < cursor_ts if descending else ts >= cursor_ts
    if side == "earlier":
        return ts <= cursor_ts if descending else ts > cursor_ts
    if seq is None:
        return ts < cursor_ts if descending else ts > cursor_ts
    row, mark = tuple_(ts, seq), tuple_(cursor_ts, bindparam("cursor_seq"))
    return row < mark if descending else row > mark
