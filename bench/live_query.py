"""Live query: the server's CPU time per request of the live routes (``GET /spaces/{id}/count``
without ``ts``, the seed's ``GET /space/{id}/count``, ``GET /spaces``) served by ``headcount
serve`` with tokens (the secure default), against the limit: a bare aiohttp handler answering
the same JSON (bench/_bare_app.py), measured the same way in the same run.

    python bench/live_query.py [--quick] [--rounds N] [--requests N]

Three servers, each a process of its own: the bare app, headcount with a tokens file, and
headcount without one (what the token check costs is the difference between the two). The
service's MQTT broker is a private one in a process of its own, so the service's figure is
HTTP's alone. The load comes from a fourth process (bench/_loadgen.py: keep-alive
connections, every request with the same ``Authorization`` header, each to a random space),
which reads the server's user + system CPU time (every thread, ``/proc/<pid>/stat``) across a
fixed number of requests after a warm-up. CPU per request, unlike requests/s, hardly moves
when other work shares the machine's cores.

Rounds interleave the targets (bare, headcount, bare, headcount, ...) route by route; the
figure is the median over the rounds of headcount's CPU per request over the bare handler's,
with its range.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from _harness import ROOT, free_port, run_process, topology_toml
from _service import private_broker, serve

from headcount.clock import now_ms
from headcount.domain.events import Traversal
from headcount.eventstore.store import EventStore
from headcount.http.tokens import Scope, add_token

SPACES = 10
DPUS = 20
ROUTES = {
    "/spaces/{id}/count": "/spaces/S{i}/count",
    "/space/{id}/count": "/space/S{i}/count",
    "/spaces": "/spaces",
}
GOAL = 1.15
BARE, HEADCOUNT, OPEN = "bare", "headcount", "no tokens"


@dataclass(frozen=True)
class Target:
    name: str
    url: str
    pid: int


@contextlib.asynccontextmanager
async def bare_app() -> AsyncIterator[Target]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "bench" / "_bare_app.py"), "--port", str(free_port()),
        "--spaces", str(SPACES), stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    try:
        url = (await asyncio.wait_for(process.stdout.readline(), 30)).decode().strip()
        yield Target(BARE, url, process.pid)
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


@contextlib.asynccontextmanager
async def headcount(
    workdir: Path, broker: str, name: str, tokens: Path | None
) -> AsyncIterator[Target]:
    """``headcount serve`` on a store of its own (``tokens``: with that tokens file)."""
    home = workdir / name.replace(" ", "-")
    home.mkdir()
    topology = home / "topology.toml"
    topology.write_text(topology_toml(DPUS, spaces=SPACES))
    store_url = f"sqlite+aiosqlite:///{home / 'bench.db'}"
    await fill(store_url)
    extra = ["--tokens", str(tokens)] if tokens is not None else []
    async with serve(home, topology, store_url, broker_url=broker, extra=extra) as service:
        yield Target(name, service.url, service.pid)


async def measure(
    target: Target, paths: list[str], workdir: Path, token: str, args: argparse.Namespace
) -> dict[str, float]:
    """One run of the load generator against ``target``: CPU seconds over ``args.requests``."""
    paths_file = workdir / "paths"
    paths_file.write_text("\n".join(paths) + "\n")
    out = await run_process(
        str(ROOT / "bench" / "_loadgen.py"), "--port", target.url.rsplit(":", 1)[1],
        "--paths-file", str(paths_file), "--connections", str(args.connections),
        "--requests", str(args.requests), "--warmup-requests", str(args.warmup),
        "--pid", str(target.pid), "--token", token,
    )  # fmt: skip
    figures: dict[str, float] = json.loads(out)
    if figures["not_200"]:
        raise RuntimeError(f"{target.name} {paths[0]}: {figures['not_200']:.0f} answers not 200")
    return figures


def load_average() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def spread(values: list[float], digits: int = 2) -> str:
    """The median of ``values`` with their range."""
    return (
        f"{statistics.median(values):.{digits}f}"
        f" ({min(values):.{digits}f}-{max(values):.{digits}f})"
    )


def report(results: dict[tuple[str, str], list[dict[str, float]]], requests: int) -> None:
    us = {key: [r["cpu_s"] / requests * 1e6 for r in runs] for key, runs in results.items()}
    print(f"\nserver CPU per request, us: median (range) over the rounds; {load_average()}")
    print(f"{'route':<20} {'bare':>20} {'headcount':>20} {'no tokens':>20} {'requests/s':>11}")
    worst = (0.0, "")
    for route in ROUTES:
        cells = [spread(us[(route, name)], 1) for name in (BARE, HEADCOUNT, OPEN)]
        rps = statistics.median(r["rps"] for r in results[(route, HEADCOUNT)])
        print(f"{route:<20} {cells[0]:>20} {cells[1]:>20} {cells[2]:>20} {rps:>11,.0f}")
    print(f"\n{'route':<20} {'headcount / bare':>20} {'token check, us':>20}")
    for route in ROUTES:
        pairs = zip(us[(route, HEADCOUNT)], us[(route, BARE)], strict=True)
        ratios = [h / b for h, b in pairs]
        token = [
            h - o for h, o in zip(us[(route, HEADCOUNT)], us[(route, OPEN)], strict=True)
        ]  # fmt: skip
        print(f"{route:<20} {spread(ratios):>20} {spread(token, 1):>20}")
        worst = max(worst, (statistics.median(ratios), route))
    verdict = "met" if worst[0] <= GOAL else "missed"
    print(
        f"CPU per request, headcount / bare handler (goal <= {GOAL}): {worst[0]:.2f}"
        f" (worst route, {worst[1]}): {verdict}"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small run, in seconds")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, help="default 5 (1 with --quick)")
    parser.add_argument("--requests", type=int, help="measured per run (default 20,000)")
    parser.add_argument("--warmup", type=int, help="requests before each measured run")
    args = parser.parse_args()
    args.rounds = args.rounds or (1 if args.quick else 5)
    args.requests = args.requests or (2_000 if args.quick else 20_000)
    args.warmup = args.warmup or (500 if args.quick else 2_000)
    print(
        f"{SPACES} spaces; {args.connections} keep-alive connections; {args.rounds} round(s) of"
        f" {args.requests:,} requests per target and route (after {args.warmup:,});"
        f" {load_average()}",
        flush=True,
    )
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="hc-bench-live-") as tmp:
        workdir = Path(tmp)
        tokens_file = workdir / "tokens.toml"
        token = add_token(tokens_file, "bench", Scope.READ)
        async with (
            private_broker(workdir) as broker,
            bare_app() as bare,
            headcount(workdir, broker, HEADCOUNT, tokens_file) as secure,
            headcount(workdir, broker, OPEN, None) as open_,
        ):
            for r in range(args.rounds):
                for route, pattern in ROUTES.items():
                    paths = [pattern.format(i=i) for i in range(SPACES)]
                    line = f"round {r + 1} {route:<20}"
                    for target in (bare, secure, open_):
                        figures = await measure(target, paths, workdir, token, args)
                        results.setdefault((route, target.name), []).append(figures)
                        line += f" {target.name} {figures['cpu_s'] / args.requests * 1e6:.1f} us"
                    print(line, flush=True)
    report(results, args.requests)


if __name__ == "__main__":
    asyncio.run(main())
