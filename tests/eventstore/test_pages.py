"""``page_keys``: the keys beyond a cursor, nearest first, each source in its own span, on
SQLite and PostgreSQL. Walking a log a page at a time in either order gives every key once."""

from __future__ import annotations

import pytest

from headcount.domain.events import Reset, Traversal
from headcount.domain.topology import Source
from headcount.eventstore.pages import Key, page_keys
from headcount.eventstore.store import EventStore

T = 1_700_000_000_000
#: d1 counts for the space until T + 5; d2 from T + 3. d3 never.
SOURCES = (Source("d1", "X", 1, 0, T + 5), Source("d2", "Z", -1, T + 3, None))


async def walk(
    store: EventStore, *, descending: bool, limit: int, start: int, end: int
) -> list[Key]:
    seen: list[Key] = []
    beyond: Key | None = None
    while True:
        async with store.log.reading() as conn:
            keys = await page_keys(
                conn,
                "A",
                SOURCES,
                start=start,
                end=end,
                beyond=beyond,
                descending=descending,
                limit=limit,
            )
        assert keys == sorted(keys, reverse=descending)
        seen += keys
        if len(keys) < limit:
            return seen
        beyond = keys[-1]


@pytest.mark.parametrize("limit", [1, 2, 3, 50])
@pytest.mark.parametrize("descending", [True, False], ids=["desc", "asc"])
async def test_pages_of_keys_cover_the_window_once(
    store: EventStore, limit: int, descending: bool
) -> None:
    await store.log.append(
        [
            Traversal(dpu, seq, T + ms, 1)
            for dpu in ("d1", "d2", "d3")
            for seq, ms in enumerate(range(0, 8))
        ]
        + [Traversal("d1", 100, T + 4, -1), Traversal("d2", 100, T + 4, -1)]
    )
    for ts in (T + 2, T + 4, T + 9):
        await store.log.append_reset(Reset("A", ts, 1))
    await store.log.append_reset(Reset("B", T + 4, 1))
    expected = sorted(
        [(T + ms, 1, "d1", ms) for ms in range(5)]
        + [(T + 4, 1, "d1", 100), (T + 4, 1, "d2", 100)]
        + [(T + ms, 1, "d2", ms) for ms in range(3, 8)]
        + [(T + 2, 0, "", 0), (T + 4, 0, "", 0)],
        reverse=descending,
    )
    assert await walk(store, descending=descending, limit=limit, start=T, end=T + 8) == expected
    assert await walk(store, descending=descending, limit=limit, start=T + 4, end=T + 5) == [
        k for k in expected if k[0] == T + 4
    ]
