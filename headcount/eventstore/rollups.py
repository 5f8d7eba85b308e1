"""Rollups in the store (``domain.rollups``): written with the snapshots of the same fold and
under the same checks (``Snapshots.add``, ``Replays.add_snapshots``), read by a series
(``Answers.rollups``). This module says how a rollup is stored, which ones a replay
superseded, and where a space's rollups end."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import exists, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from headcount.domain.rollups import Rollup
from headcount.eventstore.records import Head
from headcount.eventstore.schema import replayed_spaces, rollups

__all__ = ["ROLLUP_FIELDS", "SUPERSEDED_ROLLUP", "rollup_rows", "rollups_end"]

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


def rollup_rows(
    space_id: str, fingerprint: str, made: Sequence[Rollup], head: Head, generation: int
) -> list[dict[str, Any]]:
    """The rows that store ``made`` as folded from the logs up to ``head``."""
    return [
        {
            "space_id": space_id,
            "fingerprint": fingerprint,
            "position": head.position,
            "reset_id": head.reset_id,
            "generation": generation,
            "bucket_start": r.start,
            "bucket_end": r.end,
            "events": r.events,
            "entrances": r.entrances,
            "exits": r.exits,
            "shift": r.shift,
            "rise": r.rise,
            "dip": r.dip,
            "floor_end": r.floor_end,
            "floor_high": r.floor_high,
            "reset_end": r.reset_end,
            "reset_low": r.reset_low,
            "reset_high": r.reset_high,
        }
        for r in made
    ]


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
