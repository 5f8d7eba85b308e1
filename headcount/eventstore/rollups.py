"""Rollups in the store (``domain.rollups``): written with the snapshots of the same fold and
under the same checks (``Snapshots.add``, ``Replays.add_snapshots``), read by a series
(``Answers.rollups``). This module says how a rollup is stored, which ones a replay
superseded, and where a space's rollups end."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import exists, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from headcount.domain.rollups import Rollup
from headcount.eventstore.records import Head
from headcount.eventstore.schema import replayed_spaces, rollups
from headcount.eventstore.statements import insert_tuples

__all__ = [
    "ROLLUP_FIELDS",
    "SUPERSEDED_ROLLUP",
    "insert_rollups",
    "rollup_rows",
    "rollups_end",
]

#: The columns that hold a :class:`Rollup`'s fields, in the order of its constructor.
ROLLUP_FIELDS = (
    "bucket_start",
    "bucket_end",
    "events",
    "entrances",
    "exits",
    "shift",
    "rise",
    "dip",
    "floor_end",
    "floor_high",
    "reset_end",
    "reset_low",
    "reset_high",
)

#: A rollup that a finished replay of its space superseded: the replay is of a newer
#: generation and started folding before the rollup's end (as ``snapshots.SUPERSEDED``).
SUPERSEDED_ROLLUP = exists().where(
    replayed_spaces.c.space_id == rollups.c.space_id,
    replayed_spaces.c.replay_id > rollups.c.generation,
    or_(replayed_spaces.c.from_ts.is_(None), replayed_spaces.c.from_ts < rollups.c.bucket_end),
)


#: The columns an insert of rollups writes, in the order of :func:`rollup_rows`' tuples.
_COLUMNS = ("space_id", "fingerprint", "position", "reset_id", "generation", *ROLLUP_FIELDS)


def rollup_rows(
    space_id: str, fingerprint: str, made: Iterable[Rollup], head: Head, generation: int
) -> list[tuple[Any, ...]]:
    """The rows that store ``made`` as folded from the logs up to ``head``, as tuples for
    :func:`insert_rollups`."""
    fixed = (space_id, fingerprint, head.position, head.reset_id, generation)
    return [(*fixed, *r) for r in made]


async def insert_rollups(conn: AsyncConnection, rows: Sequence[tuple[Any, ...]]) -> None:
    """Insert rows of :func:`rollup_rows` in ``conn``'s transaction."""
    await insert_tuples(conn, "rollups", _COLUMNS, rows)


async def rollups_end(conn: AsyncConnection, space_id: str, fingerprint: str) -> int | None:
    """Where the space's rollups under ``fingerprint`` that no replay superseded end (the
    next one starts there); ``None`` without any."""
    end = await conn.scalar(
        select(func.max(rollups.c.bucket_end)).where(
            rollups.c.space_id == space_id,
            rollups.c.fingerprint == fingerprint,
            ~SUPERSEDED_ROLLUP,
        )
    )
    return None if end is None else int(end)
