"""Events pages: latency of one page of ``GET /spaces/{id}/events`` (100 events, newest first,
each with its ``count_after``) ending at random times of a year-long log, against the limit,
the same page through the bare driver (``sqlite3``): the page's rows by one statement (each
DPU's newest rows by its index range, then the newest of those), the count before them by one
statement (bench/history.py's limit: the newest usable snapshot plus the sum after it), and a
plain loop for the counts after each. Asked interleaved (limit, headcount, limit, ...) on the
same store in the same run; every page is checked against the limit's.

    python bench/events.py [--quick] [--events N] [--rounds N]

The store is bench/history.py's (one space, ten DPUs, snapshots every 100 events), kept in
bench/.data/ between runs. The figures: headcount's p50 and p99 and the limit's, and
headcount's p50 over the limit's, the median of the rounds with their spread.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import statistics
import time

from _harness import percentile
from history import DPUS, T0, TOPOLOGY, YEAR, kept_store, limit_sql
from sqlalchemy.engine import make_url

from headcount.domain.topology import Topology
from headcount.eventstore.store import EventStore
from headcount.history import History
from headcount.history.timeline import events_page

PAGE = 100
QUERIES = 100


def bare_page(conn: sqlite3.Connection, fingerprint: str, end: int) -> list[tuple[int, int]]:
    """The limit: the ``PAGE`` newest traversals before ``end`` with their counts after,
    newest first, as ``(seq, count_after)``."""
    # Each DPU's newest rows by its own index range, then the newest of those: the fastest
    # form found (one ORDER BY over every DPU's rows sorts the whole window).
    parts = " UNION ALL ".join(
        f"SELECT * FROM (SELECT ts, dpu_id, seq, direction FROM traversals"
        f" WHERE dpu_id = 'dpu{d}' AND ts >= {T0} AND ts < {end}"
        f" ORDER BY ts DESC, seq DESC LIMIT {PAGE})"
        for d in range(DPUS)
    )
    rows = conn.execute(
        f"SELECT * FROM ({parts}) ORDER BY ts DESC, dpu_id DESC, seq DESC LIMIT {PAGE}"
    ).fetchall()
    if not rows:
        return []
    before = conn.execute(limit_sql("?"), ("S0", fingerprint, rows[-1][0] - 1)).fetchone()
    count = 0 if before is None or before[0] is None else int(before[0])
    after = []
    for _, _, seq, direction in reversed(rows):
        count = max(0, count + direction)
        after.append((seq, count))
    after.reverse()
    return after


async def measure(
    url: str, ends: list[int], rounds: int
) -> tuple[list[float], list[float], list[float]]:
    topology = Topology.from_toml(TOPOLOGY)
    fingerprint = topology.fingerprint("S0")
    conn = sqlite3.connect(make_url(url).database or "", isolation_level=None)
    ours: list[float] = []
    limit: list[float] = []
    ratios: list[float] = []
    try:
        async with await EventStore.open(url) as store:
            history = History(store, topology)

            async def page(end: int) -> list[tuple[int, int]]:
                got = await events_page(history, "S0", start=T0, end=end, page_size=PAGE)
                return [(e.seq or 0, e.count_after) for e in got.events]

            for end in ends[:10]:  # warm the connections and caches
                await page(end)
                bare_page(conn, fingerprint, end)
            for _ in range(rounds):
                mine: list[float] = []
                theirs: list[float] = []
                for end in ends:
                    started = time.perf_counter()
                    expected = bare_page(conn, fingerprint, end)
                    middle = time.perf_counter()
                    got = await page(end)
                    ended = time.perf_counter()
                    if got != expected:
                        raise SystemExit(f"page ending {end}: headcount and the limit differ")
                    theirs.append((middle - started) * 1000)
                    mine.append((ended - middle) * 1000)
                ours += mine
                limit += theirs
                ratios.append(percentile(mine, 50) / percentile(theirs, 50))
    finally:
        conn.close()
    return ours, limit, ratios


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small run, in seconds")
    parser.add_argument("--events", type=int, help="events in the store (default 1M)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 5; 2 quick)")
    args = parser.parse_args()
    n = args.events or (100_000 if args.quick else 1_000_000)
    rounds = args.rounds or (2 if args.quick else 5)
    rng = random.Random(5)
    ends = [rng.randrange(T0 + YEAR // 100, T0 + YEAR) for _ in range(QUERIES)]
    url = await kept_store("sqlite", n)
    ours, limit, ratios = await measure(url, ends, rounds)
    print(f"sqlite, {n:,} events in one space over a year, pages of {PAGE} newest first:")
    for name, found in (("headcount events page", ours), ("limit: bare driver", limit)):
        p50, p99 = percentile(found, 50), percentile(found, 99)
        print(f"  {name:<26} p50 {p50:8.3f} ms   p99 {p99:8.3f} ms")
    print(
        f"  headcount p50 / limit p50: {statistics.median(ratios):.2f}"
        f" (rounds {min(ratios):.2f}-{max(ratios):.2f})"
    )


if __name__ == "__main__":
    asyncio.run(main())
