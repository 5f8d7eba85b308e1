"""Live query: HTTP requests/s and p50/p99 latency of the live count (``GET /spaces/{id}/count``
without ``ts``, and the seed's ``GET /space/{id}/count``) served by ``headcount serve``, against
a bare aiohttp app answering the same JSON shape, in one run.

    python bench/live_query.py [--quick]

The service and the baseline app are subprocesses; the load comes from a third process
(bench/_loadgen.py: keep-alive connections, each request to a random space). Targets take
turns, route by route, for a few rounds; each figure is the median over the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from _harness import ROOT, free_port, topology_toml
from _service import load, serve

from headcount.clock import now_ms
from headcount.domain.events import Traversal
from headcount.eventstore.store import EventStore

SPACES = 10
DPUS = 20
ROUTES = {"/spaces/{id}/count": "/spaces/S{i}/count", "/space/{id}/count": "/space/S{i}/count"}


@contextlib.asynccontextmanager
async def bare_app() -> AsyncIterator[str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "bench" / "_bare_app.py"), "--port", str(free_port()),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    try:
        yield (await asyncio.wait_for(process.stdout.readline(), 30)).decode().strip()
    finally:
        process.terminate()
        await process.wait()


async def fill(store_url: str) -> None:
    """A few hundred events per space over the last hour, so live states have folded some."""
    start = now_ms() - 3_600_000
    events = [
        Traversal(f"dpu{i % DPUS}", i, start + i * 10_000 // DPUS, 1 if i % 3 else -1)
        for i in range(SPACES * 300)
    ]
    async with await EventStore.open(store_url) as store:
        await store.log.append(events)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small run, in seconds")
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    rounds, warmup, seconds = (1, 0.5, 1.5) if args.quick else (3, 2.0, 8.0)
    print(
        f"{SPACES} spaces; {args.connections} keep-alive connections; {rounds} round(s) of"
        f" {seconds:g}s per target and route (after {warmup:g}s warm-up)"
    )
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="hc-bench-live-") as tmp:
        workdir = Path(tmp)
        topology = workdir / "topology.toml"
        topology.write_text(topology_toml(DPUS, spaces=SPACES))
        store_url = f"sqlite+aiosqlite:///{workdir / 'bench.db'}"
        await fill(store_url)
        async with serve(workdir, topology, store_url) as service, bare_app() as baseline:
            targets = {"baseline": baseline, "headcount": service.url}
            for r in range(rounds):
                for route, pattern in ROUTES.items():
                    paths = [pattern.format(i=i) for i in range(SPACES)]
                    for name, url in targets.items():
                        figures = await load(
                            url, paths, workdir, connections=args.connections,
                            warmup=warmup, seconds=seconds,
                        )  # fmt: skip
                        if figures["not_200"]:
                            raise RuntimeError(f"{name} {route}: {figures['not_200']} not 200")
                        results.setdefault((route, name), []).append(figures)
                    print(
                        f"round {r + 1} {route:<20}"
                        + "".join(
                            f" {name} {results[(route, name)][-1]['rps']:,.0f}/s"
                            for name in targets
                        ),
                        flush=True,
                    )
    print(f"{'route':<20} {'target':<10} {'requests/s':>11} {'p50 ms':>8} {'p99 ms':>8}")
    ratios = []
    for route in ROUTES:
        rps = {}
        for name in ("baseline", "headcount"):
            runs = results[(route, name)]
            rps[name] = statistics.median(r["rps"] for r in runs)
            p50 = statistics.median(r["p50_ms"] for r in runs)
            p99 = statistics.median(r["p99_ms"] for r in runs)
            print(f"{route:<20} {name:<10} {rps[name]:>11,.0f} {p50:>8.2f} {p99:>8.2f}")
        ratios.append((rps["headcount"] / rps["baseline"], route))
        print(f"{route:<20} {'ratio':<10} {rps['headcount'] / rps['baseline']:>11.2f}")
    worst, route = min(ratios)
    print(f"ratio headcount/baseline requests/s (goal >= 0.85): {worst:.2f} (worst route, {route})")


if __name__ == "__main__":
    asyncio.run(main())
