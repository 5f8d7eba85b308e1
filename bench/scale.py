"""Scale: resident memory and recovery time of ``headcount serve`` with 100,000 spaces and
200,000 DPUs, and the live-query latency at that size, against the same with one space, in one
run.

    python bench/scale.py [--quick] [--spaces N]

Topology: bench/_harness.topology_toml (each space a room with its own door, two DPUs over
it). Store: 20 traversals per space over the day before it was built, built through the store's
API once and kept in bench/.data/ (see bench/_store_cache.py); each run serves a copy.

Figures, read from outside the service: ready, the seconds from spawning ``headcount serve``
until ``/healthz`` answers 200; recovered, until then ``GET /spaces`` has answered with every
space's live count (each checked against a fold of the generated events); resident memory
(VmRSS of the service process, and its peak VmHWM) after that and after the live-query load;
live-query latency from bench/_loadgen.py, each request to a random space; and how long a
SIGTERM takes to stop it (final snapshots included). Then the service is started again on the
same store and topology (a restart): its recovery and memory once the topology it read is in
its cache of checked topologies (headcount.cli.topology_cache, kept in the run's directory, so
the first start is a cold one).

The limit, measured in the same run before each measurement of the service (limit, service,
limit, service, ...): a process that reads the same topology file with bare ``tomllib`` and
scans the same log through bare ``sqlite3`` in fold order (the query recovery streams), adding
each row's direction to its DPU's space's count (floored at zero), timed from its spawn as the
service is. The figure is the service's recovery time over the limit's, per round, median
(range), with the peak resident memory of both.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from _harness import topology_toml
from _service import Service, load, memory_kib, serve
from _store_cache import cached_sqlite, working_copy

from headcount.cli.topology_cache import CACHE_ENV
from headcount.clock import now_ms
from headcount.domain.events import Direction, Traversal
from headcount.eventstore.store import EventStore

EVENTS_PER_SPACE = 20
DPUS_PER_SPACE = 2
DAY = 86_400_000
BATCH = 5000
STOP_TIMEOUT_S = 180.0
GOAL_MIB = 512
GOAL_RECOVERY_S = 15


def space_events(space: int, spaces: int) -> list[tuple[int, str, int, Direction]]:
    """(offset ms into the day, dpu, seq, direction) of a space's traversals, in fold order:
    the same on every call, whenever the store was built."""
    rng = random.Random(space)
    offsets = sorted(rng.randrange(DAY) for _ in range(EVENTS_PER_SPACE))
    rows = []
    for i, offset in enumerate(offsets):
        k = i % DPUS_PER_SPACE
        direction: Direction = 1 if rng.random() < 0.5 else -1
        rows.append((offset, f"dpu{space + spaces * k}", i // DPUS_PER_SPACE, direction))
    return sorted(rows)


def expected_count(space: int, spaces: int) -> int:
    """The fold: deltas add (each DPU hangs inside its space), floored at zero."""
    count = 0
    for *_, direction in space_events(space, spaces):
        count = max(0, count + direction)
    return count


async def build(url: str, spaces: int) -> None:
    end = now_ms()
    async with await EventStore.open(url) as store:
        await store.topologies.record(
            topology_toml(spaces * DPUS_PER_SPACE, spaces), origin="bench/scale.py"
        )
        batch: list[Traversal] = []
        for space in range(spaces):
            for offset, dpu, seq, direction in space_events(space, spaces):
                batch.append(Traversal(dpu, seq, end - DAY + offset, direction))
            if len(batch) >= BATCH:
                await store.log.append(batch)
                batch = []
        await store.log.append(batch)


async def limit(topology: Path, store: Path) -> tuple[float, float]:
    """Seconds from spawn to the end of bench/_bare_recovery.py, and its peak resident
    memory (MiB)."""
    started = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(Path(__file__).with_name("_bare_recovery.py")), str(topology),
        str(store),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await process.communicate()
    took = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"the bare limit failed ({process.returncode})")
    return took, json.loads(out)["peak_kib"] / 1024


@dataclass
class Figures:
    spaces: int
    ready_s: float
    recovered_s: float
    rss_mib: float
    rss_loaded_mib: float
    peak_mib: float
    rps: float
    p50_ms: float
    p99_ms: float
    stop_s: float | None
    limit_s: float = 0.0
    limit_peak_mib: float = 0.0
    #: The restart: recovered, resident and peak.
    again_s: float = 0.0
    again_rss_mib: float = 0.0
    again_peak_mib: float = 0.0


async def measure(spaces: int, workdir: Path, quick: bool) -> Figures:
    kept = await cached_sqlite(
        "scale",
        {
            "spaces": spaces,
            "dpus_per_space": DPUS_PER_SPACE,
            "per_space": EVENTS_PER_SPACE,
            "version": 1,
        },
        lambda url: build(url, spaces),
    )
    store_url = working_copy(kept, workdir)
    topology = workdir / "topology.toml"
    topology.write_text(topology_toml(spaces * DPUS_PER_SPACE, spaces))
    expected = [expected_count(s, spaces) for s in range(spaces)]
    paths = [f"/spaces/S{s}/count" for s in range(spaces)]
    limit_s, limit_peak_mib = await limit(topology, workdir / kept.name)
    os.environ[CACHE_ENV] = str(workdir / "cache")  # empty: the first start reads the file
    async with serve(
        workdir, topology, store_url, ready_timeout_s=1800, stop_timeout_s=STOP_TIMEOUT_S
    ) as service:
        recovered_s = await all_answered(service, expected)
        rss = memory_kib(service.pid)["VmRSS"]
        figures = await load(
            service.url, paths, workdir, connections=32,
            warmup=0.5 if quick else 2.0, seconds=2.0 if quick else 8.0,
        )  # fmt: skip
        if figures["not_200"]:
            raise RuntimeError(f"{figures['not_200']} live queries answered other than 200")
        after = memory_kib(service.pid)
    async with serve(
        workdir, topology, store_url, ready_timeout_s=1800, stop_timeout_s=STOP_TIMEOUT_S
    ) as again:
        again_s = await all_answered(again, expected)
        restarted = memory_kib(again.pid)
    return Figures(
        spaces, service.ready_s, recovered_s, rss / 1024, after["VmRSS"] / 1024,
        after["VmHWM"] / 1024, figures["rps"], figures["p50_ms"], figures["p99_ms"],
        service.stop_s, limit_s, limit_peak_mib, again_s, restarted["VmRSS"] / 1024,
        restarted["VmHWM"] / 1024,
    )  # fmt: skip


async def all_answered(service: Service, expected: list[int]) -> float:
    """Seconds from spawn until ``GET /spaces`` has every space's right live count."""
    async with aiohttp.ClientSession() as session, session.get(f"{service.url}/spaces") as r:
        answered = (await r.json())["spaces"]
    took = time.perf_counter() - service.started
    counts = {s["id"]: s["count"] for s in answered}
    wrong = [i for i, want in enumerate(expected) if counts.get(f"S{i}") != want]
    if len(counts) != len(expected) or wrong:
        raise RuntimeError(f"{len(counts)} spaces answered; wrong counts for {len(wrong)}")
    return took


def row(f: Figures) -> str:
    stop = f"{f.stop_s:8.1f}" if f.stop_s is not None else f"> {STOP_TIMEOUT_S:.0f}".rjust(8)
    return (
        f"{f.spaces:>8,} {f.ready_s:>8.1f} {f.recovered_s:>9.1f} {f.rss_mib:>8.0f}"
        f" {f.rss_loaded_mib:>9.0f} {f.peak_mib:>8.0f} {f.rps:>8,.0f} {f.p50_ms:>7.2f}"
        f" {f.p99_ms:>7.2f} {stop}"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small run, in seconds")
    parser.add_argument("--spaces", type=int, help="spaces at scale (default 100,000)")
    parser.add_argument("--rounds", type=int, default=1, help="limit + service rounds at scale")
    args = parser.parse_args()
    spaces = args.spaces or (1_000 if args.quick else 100_000)
    print(
        f"{spaces:,} spaces and {spaces * DPUS_PER_SPACE:,} DPUs against 1 space and"
        f" {DPUS_PER_SPACE} DPUs; {EVENTS_PER_SPACE} events per space; SQLite"
    )
    results = []
    for n in (1, *[spaces] * args.rounds):
        with tempfile.TemporaryDirectory(prefix="hc-bench-scale-") as tmp:
            results.append(await measure(n, Path(tmp), args.quick))
    print(
        f"{'spaces':>8} {'ready s':>8} {'answered':>9} {'RSS MiB':>8} {'RSS load':>9}"
        f" {'peak MiB':>8} {'live/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'stop s':>8}"
        f" {'limit s':>8} {'limit MiB':>9} {'restart s':>9} {'RSS MiB':>8} {'peak MiB':>8}"
    )
    for f in results:
        print(
            row(f) + f" {f.limit_s:>8.1f} {f.limit_peak_mib:>9.0f} {f.again_s:>9.1f}"
            f" {f.again_rss_mib:>8.0f} {f.again_peak_mib:>8.0f}"
        )
    one, big = results[0], results[1:]
    ratios = [f.recovered_s / f.limit_s for f in big]
    recovered = statistics.median(f.recovered_s for f in big)
    restarted = statistics.median(f.again_s for f in big)
    peak = max(f.peak_mib for f in big)
    rss_ok = peak <= GOAL_MIB
    recovery_ok = recovered <= GOAL_RECOVERY_S
    print(
        f"recovery / limit (bare tomllib + bare scan and fold, same run): "
        f"{statistics.median(ratios):.2f}x (rounds {min(ratios):.2f}-{max(ratios):.2f});"
        f" peak resident {peak:,.0f} MiB against the limit's"
        f" {max(f.limit_peak_mib for f in big):,.0f} MiB"
    )
    print(
        f"restart with the checked topology cached: recovered in {restarted:.1f} s"
        f" ({statistics.median(f.again_s / f.limit_s for f in big):.2f}x the limit),"
        f" peak resident {max(f.again_peak_mib for f in big):,.0f} MiB"
        f" (goals: <= {GOAL_RECOVERY_S} s"
        f" {'met' if restarted <= GOAL_RECOVERY_S else 'MISSED'},"
        f" <= {GOAL_MIB:,} MiB"
        f" {'met' if max(f.again_peak_mib for f in big) <= GOAL_MIB else 'MISSED'})"
    )
    print(
        f"ratio {spaces:,} spaces / 1 space: peak resident {peak / one.peak_mib:.1f}x,"
        f" recovery {recovered / one.recovered_s:.1f}x,"
        f" live p99 {statistics.median(f.p99_ms for f in big) / one.p99_ms:.1f}x"
        f" (goals at 100,000 spaces: peak resident {peak:,.0f} MiB <= {GOAL_MIB:,} MiB"
        f" {'met' if rss_ok else 'MISSED'}; recovery {recovered:.1f} s <= {GOAL_RECOVERY_S} s"
        f" {'met' if recovery_ok else 'MISSED'})"
    )


if __name__ == "__main__":
    asyncio.run(main())
