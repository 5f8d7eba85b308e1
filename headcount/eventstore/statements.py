"""Statements over a space's sources, built once and cached.

They are on every answer's path. Building a SQLAlchemy expression costs more than running the
query on a small tail, so each is built once per set of sources, with the times as bind
parameters: ``lo{i}`` (each source's lower bound), ``until``, and the statement's own.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from sqlalchemy import and_, bindparam, func, or_, select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection

from headcount.domain.topology import Source
from headcount.eventstore.schema import LATE, resets, traversals

__all__ = [
    "CHUNK",
    "TAIL_PAGE",
    "first_arrival_through",
    "insert_tuples",
    "late_through",
    "resets_query",
    "source_at",
    "source_params",
    "traversals_through",
]

#: Rows per statement where a batch is split (bind-parameter limits, statement size).
CHUNK = 500
#: Rows per page of a space's traversals: a tail after a snapshot fits in one.
TAIL_PAGE = 1_000
#: Rows per statement of :func:`insert_tuples`.
_TUPLES = 5_000


async def insert_tuples(
    conn: AsyncConnection, table: str, columns: tuple[str, ...], rows: Sequence[tuple[Any, ...]]
) -> None:
    """Insert ``rows`` (tuples of ``columns``' values) into ``table`` in ``conn``'s
    transaction: tuples to the driver in one cached statement, none of SQLAlchemy's work per
    row (a replay writes hundreds of thousands of rows)."""
    sql = _insert_sql(table, columns, conn.dialect.name)
    for start in range(0, len(rows), _TUPLES):
        await conn.exec_driver_sql(sql, list(rows[start : start + _TUPLES]))


@lru_cache(maxsize=16)
def _insert_sql(table: str, columns: tuple[str, ...], dialect: str) -> str:
    marks = (
        ", ".join("?" * len(columns))
        if dialect == "sqlite"
        else ", ".join(f"${n}" for n in range(1, len(columns) + 1))
    )
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"


def source_params(
    sources: tuple[Source, ...], *, after: int | None, until: int
) -> dict[str, int] | None:
    """Bind parameters of :func:`_source_filter` for ``after < ts <= until``; ``None`` when
    no source can have an event in that span."""
    params = {"until": until}
    open_ = False
    for i, s in enumerate(sources):
        low = s.valid_from if after is None else max(s.valid_from, after + 1)
        params[f"lo{i}"] = low
        open_ = open_ or (low <= until and (s.valid_until is None or low < s.valid_until))
    return params if open_ else None


def _source_filter(sources: tuple[Source, ...]) -> Any:
    """Traversals of each source's DPU in its span, with ``ts`` from ``:lo{i}`` to ``:until``."""
    ts = traversals.c.ts
    clauses = []
    for i, s in enumerate(sources):
        conds = [
            traversals.c.dpu_id == s.dpu_id,
            ts >= bindparam(f"lo{i}"),
            ts <= bindparam("until"),
        ]
        if s.valid_until is not None:
            conds.append(ts < s.valid_until)
        clauses.append(and_(*conds))
    return or_(*clauses)


@lru_cache(maxsize=4096)
def traversals_through(sources: tuple[Source, ...], bounded: bool, rest: bool) -> Any:
    """Traversals in fold order: the first page, or (``rest``) all after
    ``(:key_ts, :key_dpu, :key_seq)``, streamed."""
    key = (traversals.c.ts, traversals.c.dpu_id, traversals.c.seq)
    stmt = select(
        traversals.c.dpu_id, traversals.c.seq, traversals.c.ts, traversals.c.direction
    ).where(_source_filter(sources))
    if bounded:
        stmt = stmt.where(traversals.c.position <= bindparam("max_position"))
    if not rest:
        return stmt.order_by(*key).limit(TAIL_PAGE)
    last: tuple[Any, ...] = (bindparam("key_ts"), bindparam("key_dpu"), bindparam("key_seq"))
    return stmt.where(tuple_(*key) > tuple_(*last)).order_by(*key).execution_options(yield_per=2000)


@lru_cache(maxsize=4096)
def late_through(sources: tuple[Source, ...]) -> Any:
    """Traversals stored late through ``sources`` after ``:after_position``."""
    return select(traversals.c.dpu_id, traversals.c.ts, traversals.c.position).where(
        _source_filter(sources), LATE, traversals.c.position > bindparam("after_position")
    )


@lru_cache(maxsize=4096)
def first_arrival_through(sources: tuple[Source, ...]) -> Any:
    """The earliest ``ts`` of a traversal through ``sources`` stored after
    ``:after_position``."""
    return select(func.min(traversals.c.ts)).where(
        _source_filter(sources), traversals.c.position > bindparam("after_position")
    )


def resets_query(
    space_id: str,
    *,
    after: int | None,
    until: int,
    max_id: int | None,
    after_id: int | None,
) -> Any:
    """Resets of a space with ``after < ts <= until`` (and ``after_id < id <= max_id`` where
    given), in time order."""
    stmt = select(
        resets.c.id, resets.c.space_id, resets.c.ts, resets.c.count, resets.c.source
    ).where(resets.c.space_id == space_id, resets.c.ts <= until)
    if after is not None:
        stmt = stmt.where(resets.c.ts > after)
    if after_id is not None:
        stmt = stmt.where(resets.c.id > after_id)
    if max_id is not None:
        stmt = stmt.where(resets.c.id <= max_id)
    return stmt.order_by(resets.c.ts)


def source_at(sources: list[Source], ts: int) -> Source:
    """The one of a DPU's ``sources`` that covers ``ts``."""
    for s in sources:
        if s.valid_from <= ts and (s.valid_until is None or ts < s.valid_until):
            return s
    raise LookupError(f"no source of DPU {sources[0].dpu_id!r} covers {ts}")
