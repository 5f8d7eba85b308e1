"""History: latency of count(space, ts) at random past times on SQLite and PostgreSQL, at 100k
and 10M events, against the seed's method (a SUM of deltas over an index on (space, ts)) on
the same data in the same run.

    python bench/history.py [--quick] [--events N] [--backend sqlite|postgresql ...]
    python bench/history.py --sweep [--events N]     # the snapshot interval, swept (SQLite)

Stores are built through the store's own API (bulk appends, then a replay to write the
snapshots) and kept between runs (bench/.data/ for SQLite, a database of its own for
PostgreSQL at $HEADCOUNT_BENCH_POSTGRES_URL, default the local test server) until the schema
changes. The seed's table is filled from the same rows. The figures: headcount's p50 and p99,
how p99 grows from the small store to the large one (goal: within 1.5x), and last the ratio of
the seed's p50 to headcount's on the large store (goal: at least 300).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator

from _harness import percentile, topology_toml
from _store_cache import DEFAULT_POSTGRES, POSTGRES_ENV, cached_postgres, cached_sqlite
from sqlalchemy import (
    BigInteger,
    Column,
    MetaData,
    SmallInteger,
    String,
    Table,
    func,
    select,
    text,
)

from headcount.domain.events import Traversal
from headcount.domain.topology import Topology
from headcount.errors import StoreError
from headcount.eventstore.store import EventStore
from headcount.history import DEFAULT_SNAPSHOT_EVERY, History
from headcount.history.replay import Replay

DPUS = 10
T0 = 1_700_000_000_000
YEAR = 365 * 86_400_000
QUERIES = 200
SEED_QUERIES = 40  # the seed's method takes seconds per query on a large store
TOPOLOGY = topology_toml(DPUS, spaces=1)

seed_meta = MetaData()
seed_deltas = Table(
    "bench_seed_deltas",
    seed_meta,
    Column("space_id", String(64), nullable=False),
    Column("ts", BigInteger, nullable=False),
    Column("delta", SmallInteger, nullable=False),
)


def events(n: int, seed: int = 7) -> Iterator[list[Traversal]]:
    """``n`` traversals in one space over a year, in time order, in chunks."""
    rng = random.Random(seed)
    gap = YEAR / n
    ts = float(T0)
    chunk: list[Traversal] = []
    for i in range(n):
        ts += rng.expovariate(1 / gap)
        chunk.append(Traversal(f"dpu{i % DPUS}", i, int(ts), 1 if rng.random() < 0.52 else -1))
        if len(chunk) == 20_000:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


async def build(url: str, n: int, every: int) -> None:
    topology = Topology.from_toml(TOPOLOGY)
    async with await EventStore.open(url) as store:
        await store.topologies.record(TOPOLOGY, origin="bench/history.py")
        stored = 0
        started = time.perf_counter()
        for chunk in events(n):
            await store.log.append(chunk)
            stored += len(chunk)
            if stored % 1_000_000 == 0:
                rate = stored / (time.perf_counter() - started)
                print(f"  {stored:,} events appended ({rate:,.0f}/s)", flush=True)
        await Replay(store, topology, snapshot_every=every, snapshot_lag_ms=0).run()
        async with store.engine.begin() as conn:
            await conn.run_sync(seed_meta.create_all)
            await conn.execute(
                text(
                    "INSERT INTO bench_seed_deltas (space_id, ts, delta)"
                    " SELECT 'S0', ts, direction FROM traversals"
                )
            )
            # The index after the rows: building it once is faster than keeping it up.
            await conn.execute(
                text(
                    "CREATE INDEX ix_bench_seed_deltas_space_ts ON bench_seed_deltas (space_id, ts)"
                )
            )


async def kept_store(backend: str, n: int, every: int = DEFAULT_SNAPSHOT_EVERY) -> str:
    params: dict[str, object] = {"events": n, "dpus": DPUS, "every": every}
    if backend == "sqlite":
        path = await cached_sqlite("history", params, lambda url: build(url, n, every))
        return f"sqlite+aiosqlite:///{path}"
    return await cached_postgres("history", params, lambda url: build(url, n, every))


async def postgres_reachable() -> bool:
    url = os.environ.get(POSTGRES_ENV, DEFAULT_POSTGRES)
    try:
        async with await EventStore.open(url, upgrade=False):
            pass
    except StoreError as e:
        if "schema" in str(e):  # reachable; the admin database holds no store, as expected
            return True
        print(f"postgresql: skipped, {e} (set {POSTGRES_ENV} to a server's URL)")
        return False
    return True


async def timed(fn: Callable[[int], Awaitable[None]], times: list[int]) -> list[float]:
    latencies = []
    for ts in times:
        started = time.perf_counter()
        await fn(ts)
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies


async def measure(url: str, times: list[int], seed_times: list[int]) -> tuple[list[float], ...]:
    """headcount's latencies, then the seed method's, on the store at ``url`` (read only)."""
    topology = Topology.from_toml(TOPOLOGY)
    async with await EventStore.open(url) as store:
        history = History(store, topology)

        async def ours(ts: int) -> None:
            await history.count_at("S0", ts)

        async def seed(ts: int) -> None:
            async with store.engine.connect() as conn:
                await conn.scalar(
                    select(func.sum(seed_deltas.c.delta)).where(
                        seed_deltas.c.space_id == "S0", seed_deltas.c.ts <= ts
                    )
                )

        await timed(ours, times[:10])  # warm the connection pool and the caches
        return await timed(ours, times), await timed(seed, seed_times)


def row(name: str, latencies: list[float]) -> str:
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    return f"{name:<38} p50 {p50:9.2f} ms   p99 {p99:9.2f} ms"


async def compare(backends: list[str], small: int, large: int) -> None:
    rng = random.Random(3)
    times = [rng.randrange(T0, T0 + YEAR) for _ in range(QUERIES)]
    seed_times = times[:SEED_QUERIES]
    ratios = []
    for backend in backends:
        results: dict[int, tuple[list[float], ...]] = {}
        if backend == "postgresql" and not await postgres_reachable():
            continue
        for n in (small, large):
            url = await kept_store(backend, n)
            ours, seed = results[n] = await measure(url, times, seed_times)
            print(f"{backend}, {n:,} events in one space over a year:", flush=True)
            print("  " + row("headcount count(space, ts)", ours))
            print("  " + row("seed: SUM(delta) over (space, ts)", seed), flush=True)
        growth = percentile(results[large][0], 99) / percentile(results[small][0], 99)
        ratio = percentile(results[large][1], 50) / percentile(results[large][0], 50)
        ratios.append(f"{backend} {ratio:,.0f}")
        print(f"{backend}: headcount p99 at {large:,} / at {small:,}: {growth:.2f} (goal <= 1.5)")
    print(f"ratio (seed p50 / headcount p50 at {large:,} events; goal >= 300): {', '.join(ratios)}")


async def sweep(n: int) -> None:
    """The snapshot interval against latency (SQLite): why the default is what it is."""
    rng = random.Random(3)
    times = [rng.randrange(T0, T0 + YEAR) for _ in range(QUERIES)]
    results = {}
    with tempfile.TemporaryDirectory(prefix="hc-bench-history-"):
        for every in (100, 250, 1_000, 10_000):
            ours, seed = results[every] = await measure(
                await kept_store("sqlite", n, every), times, times[:SEED_QUERIES]
            )
            print(f"--snapshot-every {every:>6}:", flush=True)
            print("  " + row("headcount count(space, ts)", ours))
            print("  " + row("seed: SUM(delta) over (space, ts)", seed), flush=True)
    ours, seed = results[DEFAULT_SNAPSHOT_EVERY]
    ratio = percentile(seed, 50) / percentile(ours, 50)
    print(f"ratio (seed p50 / headcount p50 at the default {DEFAULT_SNAPSHOT_EVERY}): {ratio:.1f}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small run, in seconds")
    parser.add_argument("--events", type=int, help="the large store's events (default 10M)")
    parser.add_argument(
        "--backend",
        action="append",
        choices=["sqlite", "postgresql"],
        help="repeat for both (default: both)",
    )
    parser.add_argument("--sweep", action="store_true", help="sweep --snapshot-every instead")
    args = parser.parse_args()
    if args.sweep:
        await sweep(args.events or (20_000 if args.quick else 1_000_000))
        return
    large = args.events or (100_000 if args.quick else 10_000_000)
    small = 10_000 if args.quick else 100_000
    await compare(args.backend or ["sqlite", "postgresql"], small, large)


if __name__ == "__main__":
    asyncio.run(main())
