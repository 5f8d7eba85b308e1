"""Replay: events per second folded by ``headcount replay``, against the limit, a bare
``sqlite3`` ordered scan of the same rows with a minimal in-place fold, in one run.

    python bench/replay.py [--quick] [--events N] [--rounds N]

The store (SQLite, built through the store's own API and kept in bench/.data/ between runs)
holds N traversals from 200 DPUs over 100 spaces during a year. Each round runs the limit
(the log in the replay's order through the bare driver, every column of each row as the
issue's limit read them, each row's direction added to its space's count in a plain loop),
the same reading only the DPU and direction (a stricter limit, shown beside it), then the real
command, ``headcount replay``, in its own process on the same store; its JSON summary gives
the rate it measured over its own pass (start-up excluded). The figure is the median of the
rounds' ratios, with their spread.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from _harness import run_process, topology_toml
from _store_cache import cached_sqlite, working_copy

from headcount.domain.events import Traversal
from headcount.domain.topology import Topology
from headcount.eventstore.store import EventStore
from headcount.gcpolicy import bulk_pass

DPUS = 200
SPACES = 100
T0 = 1_700_000_000_000
YEAR = 365 * 86_400_000
BATCH = 10_000


async def build(url: str, n: int, topology: str) -> None:
    """``n`` traversals in time order (as DPUs report them), appended in large batches."""
    rng = random.Random(11)
    stamps = sorted(rng.randrange(T0, T0 + YEAR) for _ in range(n))
    async with await EventStore.open(url) as store:
        await store.topologies.record(topology, origin="bench/replay.py")
        for start in range(0, n, BATCH):
            await store.log.append(
                Traversal(f"dpu{i % DPUS}", i, stamps[i], 1 if rng.random() < 0.5 else -1)
                for i in range(start, min(n, start + BATCH))
            )


#: The limit's scan: every column of a row, as the issue's limit read it, and only what its
#: fold needs (the stricter limit).
EVERY_COLUMN = "dpu_id, seq, ts, direction"
FOLDED_ONLY = "dpu_id, direction"


def bare_fold(path: Path, n: int, columns: str) -> float:
    """The limit: a bare ``sqlite3`` scan of the same rows in the same order (the order a
    replay streams them in) reading ``columns``, with a minimal fold (each DPU's space's
    count moved by the direction, in place); rows per second. It runs with the garbage
    collector set as a replay's pass sets it (``headcount.gcpolicy``): about 5% faster than
    with the interpreter's default, a gain the replay must not be credited with."""
    space_of = {f"dpu{d}": d % SPACES for d in range(DPUS)}
    counts = [0] * SPACES
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        with bulk_pass():
            started = time.perf_counter()
            cursor = conn.execute(
                f"SELECT {columns} FROM traversals"
                " WHERE position <= (SELECT max(position) FROM traversals)"
                " ORDER BY ts, dpu_id, seq"
            )
            rows = 0
            while batch := cursor.fetchmany(5000):
                for row in batch:
                    counts[space_of[row[0]]] += row[-1]
                rows += len(batch)
            seconds = time.perf_counter() - started
    finally:
        conn.close()
    if rows != n:
        raise SystemExit(f"the scan read {rows:,} rows, the store holds {n:,}")
    return rows / seconds


async def replay(url: str, topology: Path) -> dict[str, float]:
    out = await run_process(
        "-m", "headcount", "replay", "--store", url, "--topology", str(topology)
    )
    summary: dict[str, float] = json.loads(out)
    return summary


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small run, in seconds")
    parser.add_argument("--events", type=int, help="events in the store (default 1,000,000)")
    parser.add_argument("--rounds", type=int, help="limit + replay rounds (default 5; 2 quick)")
    args = parser.parse_args()
    n = args.events or (20_000 if args.quick else 1_000_000)
    rounds = args.rounds or (2 if args.quick else 5)
    document = topology_toml(DPUS, spaces=SPACES)
    Topology.from_toml(document)  # fails here, not in the command, if the generator broke
    kept = await cached_sqlite(
        "replay", {"events": n, "dpus": DPUS, "spaces": SPACES}, lambda u: build(u, n, document)
    )
    print(f"{n:,} events from {DPUS} DPUs over {SPACES} spaces in a year (SQLite)")
    limits: list[float] = []
    strict: list[float] = []
    replays: list[float] = []
    ratios: list[float] = []
    strict_ratios: list[float] = []
    with tempfile.TemporaryDirectory(prefix="hc-bench-replay-") as tmp:
        topology = Path(tmp) / "topology.toml"
        topology.write_text(document)
        url = working_copy(kept, Path(tmp))
        path = Path(tmp) / kept.name
        for round_ in range(1, rounds + 1):
            limits.append(bare_fold(path, n, EVERY_COLUMN))
            strict.append(bare_fold(path, n, FOLDED_ONLY))
            summary = await replay(url, topology)
            if summary["events read"] != n:
                raise SystemExit(f"the replay read {summary['events read']:,} of {n:,} events")
            replays.append(summary["events per second"])
            ratios.append(replays[-1] / limits[-1])
            strict_ratios.append(replays[-1] / strict[-1])
            print(
                f"round {round_}: bare scan + fold {limits[-1]:>10,.0f} rows/s (of only what"
                f" it folds {strict[-1]:>10,.0f})   replay {replays[-1]:>10,.0f} events/s"
                f" ({summary['snapshots written']:,.0f} snapshots written, generation"
                f" {summary['generation']:.0f})   ratio {ratios[-1]:.2f} ({strict_ratios[-1]:.2f})",
                flush=True,
            )
    limit, ours = statistics.median(limits), statistics.median(replays)
    print(f"limit: bare sqlite3 scan + minimal fold (median): {limit:>10,.0f} rows/s")
    print(
        f"  the same reading only the DPU and direction:    {statistics.median(strict):>10,.0f}"
        " rows/s"
    )
    print(f"headcount replay (median):                        {ours:>10,.0f} events/s")
    print(
        f"ratio (replay / limit; goal >= 0.7): {statistics.median(ratios):.2f}"
        f" (rounds {min(ratios):.2f}-{max(ratios):.2f}); against the stricter limit"
        f" {statistics.median(strict_ratios):.2f}"
        f" ({min(strict_ratios):.2f}-{max(strict_ratios):.2f})"
    )


if __name__ == "__main__":
    asyncio.run(main())
