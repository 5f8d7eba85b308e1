"""History: latency of count(space, ts) at random past times, against the seed's method (a SUM
of deltas over an index on (space, ts)) on the same data, in one run; and the snapshot interval
(``--snapshot-every``) swept to show why the default is what it is.

    python bench/history.py [--quick] [--events N]

Stores are built through the store's own API (bulk appends, then a snapshot refresh) in a
temporary directory. SQLite only for now; PostgreSQL and 10 million events belong to the
benchmarks issue.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from _harness import percentile, topology_toml
from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    MetaData,
    SmallInteger,
    String,
    Table,
    func,
    select,
)

from headcount.domain.events import Traversal
from headcount.domain.topology import Topology
from headcount.eventstore.store import EventStore
from headcount.history import DEFAULT_SNAPSHOT_EVERY, History

DPUS = 10
T0 = 1_700_000_000_000
YEAR = 365 * 86_400_000
QUERIES = 200

seed_meta = MetaData()
seed_deltas = Table(
    "bench_seed_deltas",
    seed_meta,
    Column("space_id", String(64), nullable=False),
    Column("ts", BigInteger, nullable=False),
    Column("delta", SmallInteger, nullable=False),
    Index("ix_bench_seed_deltas_space_ts", "space_id", "ts"),
)


def events(n: int, rng: random.Random) -> list[Traversal]:
    stamps = sorted(rng.randrange(T0, T0 + YEAR) for _ in range(n))
    return [
        Traversal(f"dpu{i % DPUS}", i, ts, 1 if rng.random() < 0.52 else -1)
        for i, ts in enumerate(stamps)
    ]


async def build(path: Path, topology: Topology, data: list[Traversal], every: int) -> EventStore:
    store = await EventStore.open(f"sqlite+aiosqlite:///{path}")
    for start in range(0, len(data), 5000):
        await store.append(data[start : start + 5000])
    await History(store, topology, snapshot_every=every, snapshot_lag_ms=0).refresh_snapshots(
        now=T0 + 2 * YEAR
    )
    async with store.engine.begin() as conn:
        await conn.run_sync(seed_meta.create_all)
        await conn.execute(
            seed_deltas.insert(),
            [{"space_id": "S0", "ts": t.ts, "delta": t.direction} for t in data],
        )
    return store


async def timed(fn: Callable[[int], Awaitable[None]], times: list[int]) -> list[float]:
    latencies = []
    for ts in times:
        started = time.perf_counter()
        await fn(ts)
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies


async def measure(
    store: EventStore, topology: Topology, every: int, times: list[int]
) -> list[float]:
    history = History(store, topology, snapshot_every=every)

    async def ours(ts: int) -> None:
        await history.count_at("S0", ts)

    return await timed(ours, times)


async def seed_method(store: EventStore, times: list[int]) -> list[float]:
    async def seed(ts: int) -> None:
        async with store.engine.connect() as conn:
            await conn.scalar(
                select(func.sum(seed_deltas.c.delta)).where(
                    seed_deltas.c.space_id == "S0", seed_deltas.c.ts <= ts
                )
            )

    return await timed(seed, times)


def row(name: str, latencies: list[float]) -> str:
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    return f"{name:<34} p50 {p50:9.2f} ms   p99 {p99:9.2f} ms"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small run, in seconds")
    parser.add_argument("--events", type=int, help="events in the store (default 1,000,000)")
    args = parser.parse_args()
    n = args.events or (20_000 if args.quick else 1_000_000)
    sweep = [100, 250, 1000, 10_000] if not args.quick else [100, 1000]
    rng = random.Random(7)
    topology = Topology.from_toml(topology_toml(DPUS, spaces=1))
    data = events(n, rng)
    times = [rng.randrange(T0, T0 + YEAR) for _ in range(QUERIES)]
    print(f"{n:,} events in one space over a year; {QUERIES} queries at random times (SQLite)")
    results: dict[int, tuple[list[float], list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="hc-bench-history-") as tmp:
        for every in sweep:
            started = time.perf_counter()
            store = await build(Path(tmp) / f"every{every}.db", topology, data, every)
            built = time.perf_counter() - started
            try:
                ours = await measure(store, topology, every, times)
                seed = await seed_method(store, times)
            finally:
                await store.close()
            results[every] = (ours, seed)
            print(f"--snapshot-every {every:>6}: store built in {built:.1f}s")
            print("  " + row("headcount count(space, ts)", ours))
            print("  " + row("seed: SUM(delta) over (space, ts)", seed))
    ours, seed = results[DEFAULT_SNAPSHOT_EVERY]
    ratio = percentile(seed, 50) / percentile(ours, 50)
    print(
        f"ratio (seed p50 / headcount p50 at the default --snapshot-every"
        f" {DEFAULT_SNAPSHOT_EVERY}; goal >= 300 at 10M events): {ratio:.1f}"
    )


if __name__ == "__main__":
    asyncio.run(main())
