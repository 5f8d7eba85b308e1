"""One DPU flooding: the live API's p99 latency while one DPU publishes 10,000 messages/s,
against the same service's p99 without the flood, in one run.

    python bench/flood.py [--quick]

The service runs with its default per-DPU rate limit, on a private Mosquitto (bench/ingest.py
configures it). Each round measures the live count (``GET /spaces/{id}/count``, load from
bench/_loadgen.py) once quiet and once with the flooder (bench/_flooder.py, a process of its
own) publishing, in alternating order; each flood uses new seqs and is measured once the
service refuses it (its DPU's burst spent). Figures: median over the
rounds of each p99, and the median, min and max of the per-round ratio flood/quiet
(goal: <= 2). On a 2-core machine the flooder and the broker take CPU from the service too:
a third condition, the same flood on a topic headcount does not read, measures that share.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from _harness import ROOT, metric, topology_toml
from _service import load, private_broker, serve

SPACES = 10
DPUS = 20
FLOODER = "dpu0"


async def flooded_load(
    url: str, broker: str, paths: list[str], workdir: Path, args: argparse.Namespace,
    first_seq: int, warmup: float, seconds: float, lead_s: float = 0.0, elsewhere: bool = False,
) -> tuple[dict[str, float], dict[str, float]]:  # fmt: skip
    """The load generator's figures while the flooder publishes, and the flooder's. The
    measurement starts once the service refuses the flood (its DPU's burst is spent): the
    figure is for a flood that lasts."""
    async with aiohttp.ClientSession() as session:
        before = await rate_limited(session, url)
    flooder = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "bench" / "_flooder.py"), "--broker", broker,
        "--dpu", FLOODER, "--rate", str(args.rate),
        "--seconds", str(warmup + seconds + lead_s),
        *(["--elsewhere"] if elsewhere else []),
        "--first-seq", str(first_seq), "--ts", str(time.time_ns() // 1_000_000 - 3_600_000),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with aiohttp.ClientSession() as session, asyncio.timeout(60):
        while not elsewhere:  # until the flood is refused
            if await rate_limited(session, url) > before:
                break
            await asyncio.sleep(0.05)
    figures = await load(
        url, paths, workdir, connections=args.connections, warmup=warmup, seconds=seconds
    )
    out, _ = await flooder.communicate()
    if flooder.returncode != 0:
        raise RuntimeError(f"the flooder failed with {flooder.returncode}")
    return figures, json.loads(out)


async def rate_limited(session: aiohttp.ClientSession, url: str) -> float:
    return await metric(session, url, f'headcount_rate_limited_total{{dpu="{FLOODER}"}}')


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small run, in seconds")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rate", type=int, default=10_000, help="the flood, messages/s")
    parser.add_argument(
        "--burst-s", type=float, default=12.0,
        help="seconds the first flood runs beyond the measurement, spending the DPU's burst"
        " (10,000 messages by default); later ones run 2 s beyond it",
    )  # fmt: skip
    args = parser.parse_args()
    rounds, warmup, seconds = (2, 0.5, 2.0) if args.quick else (5, 1.0, 6.0)
    print(
        f"python bench/flood.py{' --quick' if args.quick else ''}; {platform.node()},"
        f" {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; {SPACES} spaces,"
        f" {args.connections} connections; {rounds} round(s) of {seconds:g}s per condition"
        f" (after {warmup:g}s warm-up); flood {args.rate:,}/s from {FLOODER}"
    )
    quiet: list[dict[str, float]] = []
    flood: list[dict[str, float]] = []
    floods: list[dict[str, float]] = []
    control: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="hc-bench-flood-") as tmp:
        workdir = Path(tmp)
        topology = workdir / "topology.toml"
        topology.write_text(topology_toml(DPUS, spaces=SPACES))
        store_url = f"sqlite+aiosqlite:///{workdir / 'bench.db'}"
        paths = [f"/spaces/S{i}/count" for i in range(SPACES)]
        async with (
            private_broker(workdir) as broker,
            serve(workdir, topology, store_url, broker_url=broker) as service,
        ):
            for r in range(rounds):
                order = ("quiet", "flood", "elsewhere")
                order = order if r % 2 == 0 else order[::-1]
                for condition in order:
                    if condition == "quiet":
                        figures = await load(
                            service.url, paths, workdir, connections=args.connections,
                            warmup=warmup, seconds=seconds,
                        )  # fmt: skip
                        quiet.append(figures)
                    elif condition == "elsewhere":
                        figures, _ = await flooded_load(
                            service.url, broker, paths, workdir, args, first_seq=1,
                            warmup=warmup, seconds=seconds, elsewhere=True,
                        )  # fmt: skip
                        control.append(figures)
                    else:
                        figures, sent = await flooded_load(
                            service.url, broker, paths, workdir, args,
                            first_seq=1 + r * 10_000_000, warmup=warmup, seconds=seconds,
                            lead_s=args.burst_s if r == 0 else 2.0,  # then refilled a little
                        )  # fmt: skip
                        flood.append(figures)
                        floods.append(sent)
                    if figures["not_200"]:
                        raise RuntimeError(f"{condition}: {figures['not_200']} answers not 200")
                print(
                    f"round {r + 1}: p99 quiet {quiet[-1]['p99_ms']:.2f} ms, flood"
                    f" {flood[-1]['p99_ms']:.2f} ms, elsewhere {control[-1]['p99_ms']:.2f} ms;"
                    " flooder sent"
                    f" {floods[-1]['sent'] / floods[-1]['seconds']:,.0f}/s",
                    flush=True,
                )
            async with aiohttp.ClientSession() as session:
                limited = await rate_limited(session, service.url)
                stored = await metric(session, service.url, "headcount_events_ingested_total")
    sent_total = sum(f["sent"] for f in floods)
    print(f"{'condition':<10} {'requests/s':>11} {'p50 ms':>8} {'p99 ms':>8}")
    for name, runs in (("quiet", quiet), ("flood", flood), ("elsewhere", control)):
        rps = statistics.median(r["rps"] for r in runs)
        p50 = statistics.median(r["p50_ms"] for r in runs)
        p99 = statistics.median(r["p99_ms"] for r in runs)
        print(f"{name:<10} {rps:>11,.0f} {p50:>8.2f} {p99:>8.2f}")
    ratios = [f["p99_ms"] / q["p99_ms"] for q, f in zip(quiet, flood, strict=True)]
    noise = [c["p99_ms"] / q["p99_ms"] for q, c in zip(quiet, control, strict=True)]
    print(
        f"flood: {sent_total:,.0f} messages sent, {stored:,.0f} stored (its bursts),"
        f" {limited:,.0f} refused as rate_limited"
    )
    print(
        f"ratio p99 flood/quiet (goal <= 2): {statistics.median(ratios):.2f}"
        f" (min {min(ratios):.2f}, max {max(ratios):.2f})"
    )
    print(
        "ratio p99 elsewhere/quiet (the same flood on a topic headcount does not read: what"
        f" the flooder and the broker cost by sharing the CPU): {statistics.median(noise):.2f}"
        f" (min {min(noise):.2f}, max {max(noise):.2f})"
    )


if __name__ == "__main__":
    asyncio.run(main())
