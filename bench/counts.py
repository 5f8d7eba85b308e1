"""Time series: a day of 5-minute buckets (288), a week of hours (168) and a year of days (365)
of one space, on the history benchmark's store (bench/history.py builds it once and keeps it),
each against two others asked interleaved on the same store in the same run:

- the point queries: the same buckets' counts as separate ``History.count_at(end - 1)`` calls
  (the baseline a series must beat: goal >= 20x faster for the day);
- the limit: a plain scan of the window's rows through the bare driver (``sqlite3`` /
  asyncpg), in fold order, each row read (goal: the series within 2x of it for the day).

    python bench/counts.py [--quick] [--events N] [--rounds N] [--backend sqlite|postgresql ...]

The figures: each one's median over its rounds, and per round the ratios (point queries over
the series, the series over the scan), as the median with the spread of the rounds. Every
series' counts are checked against the point queries' answers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import platform
import random
import sqlite3
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import asyncpg
from history import DPUS, T0, TOPOLOGY, YEAR, kept_store, postgres_reachable
from sqlalchemy.engine import make_url

from headcount.domain.topology import Topology
from headcount.eventstore.store import EventStore
from headcount.history import History
from headcount.history.series import bucket_page, series

DAY = 86_400_000


@dataclass(frozen=True)
class Case:
    name: str
    interval: str
    days: int
    windows: int  # how many windows (each its own start) per round


CASES = [
    Case("day of 5m (288 buckets)", "5m", 1, 5),
    Case("week of 1h (168 buckets)", "1h", 7, 2),
    Case("year of 1d (365 buckets)", "1d", 365, 1),
]

_SCAN = """SELECT ts, direction FROM traversals
WHERE dpu_id IN ({dpus}) AND ts >= {p}1 AND ts < {p}2 ORDER BY ts, dpu_id, seq"""


@contextlib.asynccontextmanager
async def plain_scan(url: str) -> AsyncIterator[Callable[[int, int], Awaitable[int]]]:
    """The limit: every row of the window ``[start, end)`` through the bare driver, in fold
    order, each read (their deltas summed). Every DPU reaches S0 with placement +1."""
    dpus = ", ".join(f"'dpu{d}'" for d in range(DPUS))
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        conn = sqlite3.connect(parsed.database or "", isolation_level=None)
        sql = _SCAN.format(dpus=dpus, p="?")

        async def sqlite_scan(start: int, end: int) -> int:
            total = 0
            for _, direction in conn.execute(sql, (start, end)):
                total += direction
            return total

        try:
            yield sqlite_scan
        finally:
            conn.close()
        return
    pg = await asyncpg.connect(**parsed.translate_connect_args(username="user"))
    statement = await pg.prepare(_SCAN.format(dpus=dpus, p="$"))

    async def postgres_scan(start: int, end: int) -> int:
        total = 0
        for _, direction in await statement.fetch(start, end):
            total += direction
        return total

    try:
        yield postgres_scan
    finally:
        await pg.close()


@dataclass
class Figures:
    series: list[float]
    points: list[float]
    scan: list[float]
    speedup: list[float]  # per round: point queries / series
    over_scan: list[float]  # per round: series / scan


def spread(ratios: list[float]) -> str:
    return f"{statistics.median(ratios):.2f} (rounds {min(ratios):.2f}-{max(ratios):.2f})"


async def measure(url: str, case: Case, rounds: int, rng: random.Random) -> Figures:
    topology = Topology.from_toml(TOPOLOGY)
    last_start = T0 + YEAR - case.days * DAY
    starts = [
        T0 + DAY + rng.randrange(0, max(1, (last_start - T0 - DAY) // DAY)) * DAY
        for _ in range(case.windows)
    ]
    found = Figures([], [], [], [], [])
    async with await EventStore.open(url) as store, plain_scan(url) as scan:
        history = History(store, topology)
        pages = [bucket_page(case.interval, "UTC", s, s + case.days * DAY, 10_000) for s in starts]
        for page in pages:  # warm the connections and caches
            await series(history, "S0", page.bounds)
            await scan(page.bounds[0], page.bounds[-1])
        for _ in range(rounds):
            times = [0.0, 0.0, 0.0]
            for page in pages:
                first, last = page.bounds[0], page.bounds[-1]
                t0 = time.perf_counter()
                await scan(first, last)
                t1 = time.perf_counter()
                buckets = await series(history, "S0", page.bounds)
                t2 = time.perf_counter()
                counts = [(await history.count_at("S0", b - 1)).count for b in page.bounds[1:]]
                t3 = time.perf_counter()
                if [b.count for b in buckets] != counts:
                    raise SystemExit(f"{case.name} from {first}: series and count_at disagree")
                times[0] += t1 - t0
                times[1] += t2 - t1
                times[2] += t3 - t2
            scan_ms, series_ms, points_ms = (1000 * t / len(pages) for t in times)
            found.scan.append(scan_ms)
            found.series.append(series_ms)
            found.points.append(points_ms)
            found.speedup.append(points_ms / series_ms)
            found.over_scan.append(series_ms / scan_ms)
    return found


async def run(backends: list[str], events: int, rounds: int) -> None:
    print("python bench/counts.py", " ".join(sys.argv[1:]))
    print(f"machine: {platform.platform()}, {platform.python_version()}", flush=True)
    for backend in backends:
        if backend == "postgresql" and not await postgres_reachable():
            continue
        url = await kept_store(backend, events)
        print(f"{backend}, {events:,} events in one space over a year:", flush=True)
        for case in CASES:
            found = await measure(url, case, rounds, random.Random(11))
            print(f"  {case.name}: per window, the median of {rounds} rounds")
            print(f"    series                      {statistics.median(found.series):10.1f} ms")
            print(f"    point queries (count_at)    {statistics.median(found.points):10.1f} ms")
            print(f"    limit: plain scan, driver   {statistics.median(found.scan):10.1f} ms")
            print(f"    point queries / series: {spread(found.speedup)} (goal >= 20 for the day)")
            print(f"    series / plain scan:    {spread(found.over_scan)} (goal <= 2 for the day)")
            print(flush=True)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small run, in seconds")
    parser.add_argument(
        "--events", type=int, help="the store's events (default 10,000,000; 100,000 quick)"
    )
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 5; 2 quick)")
    parser.add_argument(
        "--backend",
        action="append",
        choices=["sqlite", "postgresql"],
        help="repeat for both (default: both)",
    )
    args = parser.parse_args()
    events = args.events or (100_000 if args.quick else 10_000_000)
    rounds = args.rounds or (2 if args.quick else 5)
    await run(args.backend or ["sqlite", "postgresql"], events, rounds)


if __name__ == "__main__":
    asyncio.run(main())
