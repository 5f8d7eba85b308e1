"""EXPLAIN of the store's reads on a partitioned log: which months each reads, by which index.

    python bench/_explain_partitions.py [-v]

Fills a database of its own (12 months, 120,000 traversals of the seed's two DPUs, snapshots),
captures every statement of a past count, an events page, a series, the log's head, a seq
range count and a replay, then prints for each the partitions and indexes its plan reads
(``-v``: the whole plan). Not a benchmark: what docs/architecture.md says of pruning comes from
here. Needs PostgreSQL as bench/partitions.py does.
"""

from __future__ import annotations

import asyncio
import random
import re
import sys
from pathlib import Path
from typing import Any

import asyncpg
from partitions import admin_url, database
from sqlalchemy import event, text

from headcount.domain.events import Traversal
from headcount.domain.topology import Topology
from headcount.eventstore import partitions
from headcount.eventstore.partitions import Month
from headcount.eventstore.store import EventStore
from headcount.history import History
from headcount.history.replay import Replay
from headcount.history.series import series
from headcount.history.timeline import events_page

SEED = Path(__file__).resolve().parent.parent / "examples" / "seed" / "topology.toml"
captured: list[tuple[str, tuple[Any, ...]]] = []


def capture_driver() -> None:
    """The fast reads go past SQLAlchemy (answers.py): note what they send to asyncpg."""
    original = asyncpg.connection.Connection.fetch

    async def fetch(self: asyncpg.Connection, query: str, *args: Any, **kw: Any) -> Any:
        captured.append((query, args))
        return await original(self, query, *args, **kw)

    asyncpg.connection.Connection.fetch = fetch


async def fill(store: EventStore, topology: Topology) -> list[Month]:
    months = [Month(2018, m) for m in range(1, 13)]
    await partitions.create(store.engine, months)
    rng = random.Random(1)
    events = []
    for dpu in ("283", "423"):
        stamps = sorted(rng.randrange(months[0].start, months[-1].end) for _ in range(60_000))
        events += [Traversal(dpu, i + 1, t, rng.choice((1, -1))) for i, t in enumerate(stamps)]
    for i in range(0, len(events), 5000):
        await store.log.append(events[i : i + 5000])
    await History(store, topology, snapshot_lag_ms=0).refresh_snapshots(now=months[-1].end)
    async with store.engine.connect() as conn:
        await conn.execute(text("ANALYZE"))
        await conn.commit()
    return months


async def reads(store: EventStore, topology: Topology) -> None:
    def grab(*args: Any) -> None:
        _conn, _cursor, statement, parameters, _context, many = args
        if not many:
            captured.append((statement, tuple(parameters or ())))

    event.listen(store.engine.sync_engine, "before_cursor_execute", grab)
    history = History(store, topology)
    at = Month(2018, 7).start + 12_345_678
    june = Month(2018, 6).start
    await history.count_at("A", at)
    await history.count_at("B", Month(2018, 3).start + 5)
    await events_page(history, "A", start=june, end=Month(2018, 7).start, page_size=50)
    await series(history, "A", [june + k * 3_600_000 for k in range(25)])
    await store.log.head()
    await store.log.count_seqs("283", 100, 200)
    await Replay(store, topology).states_at([at])


async def explain(url: str, verbose: bool) -> None:
    conn = await asyncpg.connect(url)
    seen = set()
    for sql, args in captured:
        key = re.sub(r"\s+", " ", sql).strip()
        if key in seen or not key.upper().startswith(("SELECT", "WITH")):
            continue
        seen.add(key)
        lines = [r[0] for r in await conn.fetch("EXPLAIN (COSTS OFF) " + sql, *args)]
        tables = sorted(
            {
                m
                for line in lines
                for m in re.findall(r" on (traversals_(?:default|y\d{4}m\d{2}))\b", line)
            }
        )
        indexes = sorted({m for line in lines for m in re.findall(r"using (traversals_\w+)", line)})
        print("=" * 100)
        print(key[:300])
        print(f"  months and DEFAULT read: {len(tables)}: {', '.join(tables)}")
        print(f"  their indexes: {', '.join(indexes) or '(none)'}")
        if verbose:
            print("\n".join(lines))
    await conn.close()


async def main() -> None:
    capture_driver()
    topology = Topology.from_toml(SEED.read_text(), source=str(SEED))
    async with database() as url:
        async with await EventStore.open(
            url.replace("postgresql://", "postgresql+asyncpg://")
        ) as store:
            await fill(store, topology)
            await reads(store, topology)
        await explain(url, "-v" in sys.argv)


if __name__ == "__main__":
    print(f"EXPLAIN on {admin_url()}")
    asyncio.run(main())
