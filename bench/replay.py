"""Replay: events per second folded by ``headcount replay``, against a plain ordered scan of
the same rows, in one run.

    python bench/replay.py [--quick] [--events N] [--rounds N]

The store (SQLite, built through the store's own API and kept in bench/.data/ between runs)
holds N traversals from 200 DPUs over 100 spaces during a year. Each round scans the log in
fold order doing nothing with the rows (the baseline: what reading alone costs), then runs the
real command, ``headcount replay``, in its own process on the same store; its JSON summary
gives the rate it measured over its own pass (start-up excluded). The best round of each is
kept: on a shared machine the best is the one least disturbed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
from pathlib import Path

from _harness import run_process, topology_toml
from _store_cache import cached_sqlite, working_copy

from headcount.domain.events import Traversal
from headcount.domain.topology import Topology
from headcount.eventstore.store import EventStore

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


async def scan(url: str) -> tuple[int, float]:
    """Rows read and seconds taken by an ordered scan of the whole log."""
    async with await EventStore.open(url) as store:
        head = await store.log.head()
        started = time.perf_counter()
        rows = 0
        async for batch in store.log.scan_log(after=None, head=head):
            rows += len(batch)
        return rows, time.perf_counter() - started


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
    parser.add_argument("--rounds", type=int, help="scan + replay rounds (default 3; 1 quick)")
    args = parser.parse_args()
    n = args.events or (20_000 if args.quick else 1_000_000)
    rounds = args.rounds or (1 if args.quick else 3)
    document = topology_toml(DPUS, spaces=SPACES)
    Topology.from_toml(document)  # fails here, not in the command, if the generator broke
    kept = await cached_sqlite(
        "replay", {"events": n, "dpus": DPUS, "spaces": SPACES}, lambda u: build(u, n, document)
    )
    print(f"{n:,} events from {DPUS} DPUs over {SPACES} spaces in a year (SQLite)")
    scans: list[float] = []
    replays: list[float] = []
    with tempfile.TemporaryDirectory(prefix="hc-bench-replay-") as tmp:
        topology = Path(tmp) / "topology.toml"
        topology.write_text(document)
        url = working_copy(kept, Path(tmp))
        for round_ in range(1, rounds + 1):
            rows, seconds = await scan(url)
            if rows != n:
                raise SystemExit(f"the scan read {rows:,} rows, the store holds {n:,}")
            scans.append(rows / seconds)
            summary = await replay(url, topology)
            if summary["events read"] != n:
                raise SystemExit(f"the replay read {summary['events read']:,} of {n:,} events")
            replays.append(summary["events per second"])
            print(
                f"round {round_}: scan {scans[-1]:>10,.0f} rows/s   replay"
                f" {replays[-1]:>10,.0f} events/s ({summary['snapshots written']:,.0f}"
                f" snapshots written, generation {summary['generation']:.0f})",
                flush=True,
            )
    best_scan, best_replay = max(scans), max(replays)
    print(f"plain ordered scan of the log (best):  {best_scan:>10,.0f} rows/s")
    print(f"headcount replay (best):               {best_replay:>10,.0f} events/s")
    print(f"ratio (replay / scan; goal >= 0.5): {best_replay / best_scan:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
