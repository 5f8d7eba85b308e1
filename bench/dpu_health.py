"""Sensor health: what one DPU's health costs (``GET /dpus/{id}/health``, and each step of the
background pass that keeps the ``headcount_dpu_*`` gauges), on a store of a busy fleet, against
reading the rows it depends on and against one scan of the store.

    python bench/dpu_health.py [--quick] [--dpus N] [--per-hour N] [--rounds N] [--postgres]

The store: ``--dpus`` DPUs, each over a doorway of its own, five weeks of weekday traffic from
08:00 to 18:00 at ``--per-hour`` traversals an hour each; the health is asked at 11:00 on the
last Tuesday, with the doorway silent since 10:00 (so every figure is worked out in full).

Three measures, interleaved round by round, medians with min and max:

- ``health``: ``dpu_health`` for one DPU (seq gaps over 7 days, its doorway's hourly traffic
  over the 4 weeks before the silence, its newest event, in/out over 7 days);
- ``rows``: fetching that DPU's rows for the same 4 weeks with a plain SELECT: the least any
  exact answer built in Python would read (the limit ``health`` should beat);
- ``scan``: one count over every row of the store: what a refresh that scanned the store would
  cost at least (``health`` should be a small fraction of it, shrinking as the fleet grows).

It also prints what a pass of the gauges over the fleet costs (``health`` times the DPUs) and
how often, at the watch's defaults, each DPU's gauges are then refreshed.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import func, select

from headcount.domain.events import Traversal
from headcount.domain.timefmt import to_ms
from headcount.domain.topology import Assignment, Doorway, Link, Space, Topology
from headcount.eventstore.engine import read_transaction
from headcount.eventstore.schema import traversals
from headcount.eventstore.store import EventStore
from headcount.history.dpu_health import dpu_health

TUESDAY_11 = datetime(2023, 11, 14, 11, 0, tzinfo=UTC)
BATCH = 5000


def topology(dpus: int) -> Topology:
    start = to_ms(TUESDAY_11 - timedelta(weeks=6))
    return Topology(
        [Space("R", "Room")],
        [Doorway(f"D{d}", f"Door {d}", (Link("R", 1),)) for d in range(dpus)],
        [Assignment(f"dpu{d}", f"D{d}", start) for d in range(dpus)],
    )


def traffic(dpu_id: str, per_hour: int) -> Iterator[Traversal]:
    """Weekdays 08:00 to 18:00 for five weeks, silent from 10:00 on the last Tuesday."""
    step = 3_600_000 // per_hour
    day = TUESDAY_11.replace(hour=0) - timedelta(weeks=5)
    seq = 0
    while day < TUESDAY_11:
        if day.weekday() < 5:
            first = to_ms(day + timedelta(hours=8))
            last = min(to_ms(day + timedelta(hours=18)), to_ms(TUESDAY_11) - 3_600_000)
            for ts in range(first, last, step):
                seq += 1
                yield Traversal(dpu_id, seq, ts, 1 if seq % 2 else -1)
        day += timedelta(days=1)


async def build(store: EventStore, dpus: int, per_hour: int) -> int:
    batch: list[Traversal] = []
    stored = 0
    for d in range(dpus):
        for t in traffic(f"dpu{d}", per_hour):
            batch.append(t)
            if len(batch) == BATCH:
                stored += len((await store.log.append(batch)).new)
                batch = []
    stored += len((await store.log.append(batch)).new)
    return stored


async def timed(measure: Callable[[], Awaitable[object]]) -> float:
    started = time.perf_counter()
    await measure()
    return time.perf_counter() - started


def line(name: str, times: list[float]) -> str:
    ms = [t * 1000 for t in times]
    return (
        f"{name:<7} median {statistics.median(ms):9.2f} ms  (min {min(ms):.2f}, max {max(ms):.2f})"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small run, in seconds")
    parser.add_argument("--dpus", type=int, help="DPUs in the store (default 100)")
    parser.add_argument("--per-hour", type=int, default=60, help="traversals an hour per DPU")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 20)")
    parser.add_argument("--postgres", help="a PostgreSQL URL (its database is filled)")
    args = parser.parse_args()
    dpus = args.dpus or (5 if args.quick else 100)
    rounds = args.rounds or (5 if args.quick else 20)
    topo = topology(dpus)
    now = to_ms(TUESDAY_11)
    with tempfile.TemporaryDirectory(prefix="hc-bench-health-") as tmp:
        url = args.postgres or f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}"
        async with await EventStore.open(url) as store:
            started = time.perf_counter()
            stored = await build(store, dpus, args.per_hour)
            print(
                f"{stored:,} events, {dpus} DPUs at {args.per_hour}/h in working hours,"
                f" {store.backend}; built in {time.perf_counter() - started:.0f}s"
                f"\nPython {platform.python_version()}, {platform.machine()},"
                f" {' '.join(sys.argv)}",
                flush=True,
            )
            since = now - 5 * 7 * 86_400_000

            async def health() -> object:
                return await dpu_health(store, topo, "dpu0", now)

            async def rows() -> object:
                async with read_transaction(store.engine) as conn:
                    t = traversals.c
                    query = select(t.seq, t.ts, t.direction).where(
                        t.dpu_id == "dpu0", t.ts > since, t.ts <= now
                    )
                    return (await conn.execute(query)).all()

            async def scan() -> object:
                async with read_transaction(store.engine) as conn:
                    query = select(func.count()).where(traversals.c.received_at >= 0)
                    return await conn.scalar(query)

            measures = {"health": health, "rows": rows, "scan": scan}
            for measure in measures.values():  # warm-up
                await measure()
            times: dict[str, list[float]] = {name: [] for name in measures}
            for _ in range(rounds):
                for name, measure in measures.items():
                    times[name].append(await timed(measure))
            for name, found in times.items():
                print(line(name, found))
            h = statistics.median(times["health"])
            print(f"health / rows: {h / statistics.median(times['rows']):.2f} (goal: <= 1)")
            print(f"health / scan: {h / statistics.median(times['scan']):.3f} (goal: << 1)")
            # HealthWatch's defaults: a pass a minute, the store busy a tenth of the time at most.
            every = max(60.0, h * dpus / 0.1)
            print(
                f"a pass over {dpus} DPUs: {h * dpus:.2f} s of store time; at most a tenth of"
                f" the time, so each DPU's gauges are refreshed every {every:.0f} s"
            )


if __name__ == "__main__":
    asyncio.run(main())
