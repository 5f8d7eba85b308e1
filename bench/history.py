"""History: latency of count(space, ts) at random past times on SQLite and PostgreSQL, at 100k
and 10M events, against the limit, the same answer through the bare driver in one statement
(``sqlite3`` / asyncpg: the newest usable snapshot and the sum of the deltas after it), asked
interleaved (limit, headcount, limit, ...) on the same store in the same run, and against the
seed's method (a SUM of deltas over an index on (space, ts)).

    python bench/history.py [--quick] [--events N] [--rounds N] [--backend sqlite|postgresql ...]
    python bench/history.py --sweep [--events N]     # the snapshot interval, swept (SQLite)

Stores are built through the store's own API (bulk appends, then a replay to write the
snapshots) and kept between runs (bench/.data/ for SQLite, a database of its own for
PostgreSQL at $HEADCOUNT_BENCH_POSTGRES_URL, default the local test server) until the schema
changes. The seed's table is filled from the same rows. The figures: headcount's p50 and p99
and the limit's; headcount's p50 over the limit's, the median of the rounds with their spread
(goal: at most 2); how headcount's p99 grows from the small store to the large one (goal:
within 1.5x); the seed's p50 over headcount's. Every answer is checked against the limit's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import sqlite3
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field

import asyncpg
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
from sqlalchemy.engine import make_url

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


def limit_sql(placeholder: str) -> str:
    """The same question in one statement, written for this benchmark's topology (every DPU
    reaches S0 from before the data starts, placement +1): the newest snapshot that no replay
    superseded and no late traversal or reset invalidates, plus the sum of the deltas after it.
    ``placeholder``: ``?`` (sqlite3) or ``$`` (asyncpg)."""
    dpus = ", ".join(f"'dpu{d}'" for d in range(DPUS))
    p = placeholder
    return f"""
WITH snap AS (
  SELECT s.as_of, s.count, s.position, s.reset_id FROM snapshots s
  WHERE s.space_id = {p}1 AND s.fingerprint = {p}2 AND s.as_of <= {p}3
    AND NOT EXISTS (SELECT 1 FROM replayed_spaces r WHERE r.space_id = s.space_id
      AND r.replay_id > s.generation AND (r.from_ts IS NULL OR r.from_ts <= s.as_of))
  ORDER BY s.as_of DESC LIMIT 1
)
SELECT snap.count + COALESCE((SELECT SUM(t.direction) FROM traversals t
    WHERE t.dpu_id IN ({dpus}) AND t.ts > snap.as_of AND t.ts <= {p}3), 0)
FROM snap
WHERE NOT EXISTS (SELECT 1 FROM traversals t WHERE late = true AND t.dpu_id IN ({dpus})
    AND t.ts <= snap.as_of AND t.position > snap.position)
  AND NOT EXISTS (SELECT 1 FROM resets r WHERE r.space_id = {p}1 AND r.ts <= snap.as_of
    AND r.id > snap.reset_id)
"""


@contextlib.asynccontextmanager
async def bare_driver(url: str) -> AsyncIterator[Callable[[int], Awaitable[int | None]]]:
    """The limit: ``count(S0, ts)`` through the bare driver (``sqlite3`` on the caller's
    thread, or one asyncpg connection), one statement per answer."""
    fingerprint = Topology.from_toml(TOPOLOGY).fingerprint("S0")
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        conn = sqlite3.connect(parsed.database or "", isolation_level=None)
        sql = limit_sql("?")

        async def sqlite_count(ts: int) -> int | None:
            row = conn.execute(sql, ("S0", fingerprint, ts)).fetchone()
            return None if row is None else int(row[0])

        try:
            yield sqlite_count
        finally:
            conn.close()
        return
    pg = await asyncpg.connect(**parsed.translate_connect_args(username="user"))
    statement = await pg.prepare(limit_sql("$"))

    async def postgres_count(ts: int) -> int | None:
        found = await statement.fetchval("S0", fingerprint, ts)
        return None if found is None else int(found)

    try:
        yield postgres_count
    finally:
        await pg.close()


async def timed(fn: Callable[[int], Awaitable[object]], times: list[int]) -> list[float]:
    latencies = []
    for ts in times:
        started = time.perf_counter()
        await fn(ts)
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies


@dataclass
class Measured:
    """Latencies (ms) of headcount and of the bare driver, taken interleaved, in rounds."""

    ours: list[float] = field(default_factory=list)
    limit: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)  # per round: our p50 / the limit's p50
    seed: list[float] = field(default_factory=list)


async def measure(url: str, times: list[int], seed_times: list[int], rounds: int) -> Measured:
    """On the store at ``url`` (read only): rounds of the query times, each asked of the bare
    driver, then of headcount (limit, headcount, limit, ...); the two must agree. Then the
    seed's method."""
    topology = Topology.from_toml(TOPOLOGY)
    found = Measured()
    async with await EventStore.open(url) as store, bare_driver(url) as bare:
        history = History(store, topology)
        for ts in times:  # warm the connections and the caches: each page both will read
            await history.count_at("S0", ts)
            await bare(ts)
        for _ in range(rounds):
            ours: list[float] = []
            limit: list[float] = []
            for ts in times:
                started = time.perf_counter()
                expected = await bare(ts)
                middle = time.perf_counter()
                got = (await history.count_at("S0", ts)).count
                ended = time.perf_counter()
                if expected is not None and got != expected:
                    raise SystemExit(
                        f"count(S0, {ts}): headcount {got}, the bare driver {expected}"
                    )
                limit.append((middle - started) * 1000)
                ours.append((ended - middle) * 1000)
            found.ours += ours
            found.limit += limit
            found.ratios.append(percentile(ours, 50) / percentile(limit, 50))

        async def seed(ts: int) -> None:
            async with store.engine.connect() as conn:
                await conn.scalar(
                    select(func.sum(seed_deltas.c.delta)).where(
                        seed_deltas.c.space_id == "S0", seed_deltas.c.ts <= ts
                    )
                )

        found.seed = await timed(seed, seed_times)
    return found


def row(name: str, latencies: list[float]) -> str:
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    return f"{name:<38} p50 {p50:9.3f} ms   p99 {p99:9.3f} ms"


def spread(ratios: list[float]) -> str:
    return f"{statistics.median(ratios):.2f} (rounds {min(ratios):.2f}-{max(ratios):.2f})"


async def compare(backends: list[str], small: int, large: int, rounds: int) -> None:
    rng = random.Random(3)
    times = [rng.randrange(T0, T0 + YEAR) for _ in range(QUERIES)]
    seed_times = times[:SEED_QUERIES]
    summary = []
    for backend in backends:
        results: dict[int, Measured] = {}
        if backend == "postgresql" and not await postgres_reachable():
            continue
        for n in (small, large):
            url = await kept_store(backend, n)
            found = results[n] = await measure(url, times, seed_times, rounds)
            print(f"{backend}, {n:,} events in one space over a year:", flush=True)
            print("  " + row("headcount count(space, ts)", found.ours))
            print("  " + row("limit: bare driver, one statement", found.limit))
            print(f"  headcount p50 / limit p50: {spread(found.ratios)} (goal <= 2)")
            print("  " + row("seed: SUM(delta) over (space, ts)", found.seed), flush=True)
        growth = percentile(results[large].ours, 99) / percentile(results[small].ours, 99)
        seed_ratio = percentile(results[large].seed, 50) / percentile(results[large].ours, 50)
        print(f"{backend}: headcount p99 at {large:,} / at {small:,}: {growth:.2f} (goal <= 1.5)")
        summary.append(
            f"{backend}: headcount / limit p50 {spread(results[large].ratios)} (goal <= 2),"
            f" p99 growth {growth:.2f} (goal <= 1.5), seed / headcount p50 {seed_ratio:,.0f}"
        )
    print(f"at {large:,} events:")
    for line in summary:
        print("  " + line)


async def sweep(n: int) -> None:
    """The snapshot interval against latency (SQLite): why the default is what it is."""
    rng = random.Random(3)
    times = [rng.randrange(T0, T0 + YEAR) for _ in range(QUERIES)]
    results = {}
    with tempfile.TemporaryDirectory(prefix="hc-bench-history-"):
        for every in (100, 250, 1_000, 10_000):
            found = results[every] = await measure(
                await kept_store("sqlite", n, every), times, times[:SEED_QUERIES], 1
            )
            print(f"--snapshot-every {every:>6}:", flush=True)
            print("  " + row("headcount count(space, ts)", found.ours))
            print("  " + row("limit: bare driver, one statement", found.limit))
            print("  " + row("seed: SUM(delta) over (space, ts)", found.seed), flush=True)
    found = results[DEFAULT_SNAPSHOT_EVERY]
    ratio = percentile(found.seed, 50) / percentile(found.ours, 50)
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
    parser.add_argument(
        "--rounds", type=int, help="interleaved rounds of the queries (default 5; 2 quick)"
    )
    parser.add_argument("--sweep", action="store_true", help="sweep --snapshot-every instead")
    args = parser.parse_args()
    if args.sweep:
        await sweep(args.events or (20_000 if args.quick else 1_000_000))
        return
    large = args.events or (100_000 if args.quick else 10_000_000)
    small = 10_000 if args.quick else 100_000
    rounds = args.rounds or (2 if args.quick else 5)
    await compare(args.backend or ["sqlite", "postgresql"], small, large, rounds)


if __name__ == "__main__":
    asyncio.run(main())
