"""Live push: 1,000 WebSocket subscribers to 100 spaces (each client to 5, so 50 per space),
events through the real ingest path (MQTT, group commit, actors, change feed, ``/live``).

    python bench/live_push.py [--quick]

Two figures, each against its baseline in the same run:

- delay: at a steady event rate, the p99 delay from an event's publish by its DPU (its ``ts``
  is the publisher's wall clock; the commit time is not observable from outside, so the
  figure includes the broker hop, the group commit and the fold) to a subscriber receiving
  the change; against the same with one subscriber instead of 1,000 (the same path without
  the fan-out).
- ingest: events/s of a flood of single-event messages, with the 1,000 subscribers connected
  against without, rounds interleaved (without, with, with, without, ...). Goal: >= 0.9.
  Subscribers that fall behind by more than their queue are disconnected by design (the
  actors never wait for them): the closes are counted and printed. Each flood also gives the
  CPU per event of the service and of the subscribers' process (/proc, the whole flood's,
  the publisher's start included: a slight overestimate), and the cores that keeps busy at
  the flood's rate. The service is one event loop: its CPU per event with the subscribers over
  its CPU per event without bounds the ratio wherever the subscribers run.

The broker is a Mosquitto of the benchmark's own when installed (else amqtt in a process of
its own); publisher and subscribers are processes of their own.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from _cpu import CpuMeter, children
from _harness import ROOT, metric, run_process, service, topology_toml
from ingest import amqtt_process, mosquitto_process

SPACES = 100
DPUS = 100


@contextlib.asynccontextmanager
async def subscribers(url: str, clients: int) -> AsyncIterator[asyncio.subprocess.Process]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "bench" / "_ws_subscribers.py"), "--url", url,
        "--clients", str(clients), "--spaces", str(SPACES), "--per-client", "5",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    try:
        line = await asyncio.wait_for(process.stdout.readline(), 300)
        if line.strip() != b"ready":
            raise RuntimeError(f"subscribers did not start: {line!r}")
        yield process
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def summary(process: asyncio.subprocess.Process) -> dict[str, Any]:
    assert process.stdin is not None
    assert process.stdout is not None
    process.stdin.write(b"stop\n")
    await process.stdin.drain()
    result: dict[str, Any] = json.loads(await asyncio.wait_for(process.stdout.readline(), 60))
    return result


class Seq:
    """Sequence numbers never used twice against one service."""

    def __init__(self) -> None:
        self.next = 1

    def take(self, events: int) -> int:
        first, self.next = self.next, self.next + events
        return first


async def publish(broker: str, seq: Seq, events: int, rate: float = 0.0) -> None:
    await run_process(
        str(ROOT / "bench" / "_live_publisher.py"), "--broker", broker, "--events", str(events),
        "--dpus", str(DPUS), "--rate", str(rate), "--seq", str(seq.take(events // DPUS)),
    )  # fmt: skip


async def total(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(f"{url}/spaces") as response:
        return sum(s["count"] for s in (await response.json())["spaces"])


async def flood_rate(url: str, broker: str, seq: Seq, events: int) -> float:
    """Events/s from the first reading that saw events stored to the last one in the live
    counts, counting the events stored after that first reading (those it saw were received
    before it, at a time not seen from here: a commit can hold a few thousand)."""
    async with aiohttp.ClientSession() as session:
        stored0, counted0 = (
            await metric(session, url, "headcount_events_ingested_total"),
            await total(session, url),
        )
        publishing = asyncio.create_task(publish(broker, seq, events))
        first = 0.0
        at_first = 0
        async with asyncio.timeout(600):
            while True:
                stored = await metric(session, url, "headcount_events_ingested_total") - stored0
                now = time.perf_counter()
                if stored and not first:
                    first, at_first = now, int(stored)
                if stored >= events and await total(session, url) - counted0 >= events:
                    break
                await asyncio.sleep(0.02)
        await publishing
    if at_first >= events:
        raise RuntimeError(f"all {events:,} events were stored by the first reading: too few")
    return (events - at_first) / (now - first)


def service_pid() -> int:
    """The ``headcount serve`` this benchmark started."""
    for pid in children(os.getpid()):
        with contextlib.suppress(OSError):
            if b"serve" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"):
                return pid
    raise RuntimeError("no headcount serve among this benchmark's processes")


async def metered_flood(
    url: str, broker: str, seq: Seq, events: int, pids: list[int]
) -> tuple[float, list[float], float]:
    """A flood's events/s; the CPU µs per event of each of ``pids``; and the cores they kept
    busy together at that rate (their CPU per event times events/s)."""
    meters = [CpuMeter([pid]) for pid in pids]
    for meter in meters:
        meter.start()
    rate = await flood_rate(url, broker, seq, events)
    per_event = [1e6 * meter.stop() / events for meter in meters]
    return rate, per_event, sum(per_event) * rate / 1e6


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small run, in seconds")
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=100.0, help="steady events/s")
    args = parser.parse_args()
    steady_s = 10 if args.quick else 60
    steady_events = int(args.rate * steady_s) // DPUS * DPUS
    flood = 10_000 if args.quick else 20_000  # quick: still many readings (flood_rate)
    rounds = ["without", "with"] if args.quick else ["without", "with", "with", "without"] * 2
    with tempfile.TemporaryDirectory(prefix="hc-bench-") as tmp:
        async with contextlib.AsyncExitStack() as stack:
            if shutil.which("mosquitto"):
                broker = await stack.enter_async_context(mosquitto_process(Path(tmp)))
                kind = "mosquitto"
            else:
                broker = await stack.enter_async_context(amqtt_process())
                kind = "amqtt (own process)"
            topology = topology_toml(DPUS, spaces=SPACES)
            url = await stack.enter_async_context(service(Path(tmp), topology, broker_url=broker))
            seq = Seq()
            print(f"broker: {kind}; {args.clients} subscribers, 5 spaces each, {SPACES} spaces")
            delays: dict[int, dict[str, Any]] = {}
            for clients in (1, args.clients):
                async with subscribers(url, clients) as subs:
                    await publish(broker, seq, steady_events, args.rate)
                    await asyncio.sleep(1)  # the last events' pushes
                    delays[clients] = delay = await summary(subs)
                print(
                    f"steady {args.rate:.0f} events/s for {steady_s}s, {clients:>5} subscribers:"
                    f" {delay['delays']:,} changes received; delay publish -> subscriber p50"
                    f" {delay['p50_ms']:.1f} ms, p99 {delay['p99_ms']:.1f} ms, max"
                    f" {delay['max_ms']:.1f} ms; closed by the server: {delay['closed'] or 'none'}",
                    flush=True,
                )
            rates: dict[str, list[float]] = {"with": [], "without": []}
            cpu: dict[str, list[float]] = {"with": [], "without": []}  # service, µs/event
            served = service_pid()
            for mode in rounds:
                if mode == "without":
                    rate, (us,), cores = await metered_flood(url, broker, seq, flood, [served])
                    closed = f"; service {us:.0f} us CPU/event; {cores:.2f} cores busy"
                else:
                    async with subscribers(url, args.clients) as subs:
                        rate, (us, subs_us), cores = await metered_flood(
                            url, broker, seq, flood, [served, subs.pid]
                        )
                        result = await summary(subs)
                    closed = f" (subscribers closed by the server: {result['closed'] or 'none'},"
                    closed += f" still open {result['open']}); service {us:.0f} us CPU/event,"
                    closed += f" subscribers {subs_us:.0f} us/event; {cores:.2f} cores busy"
                rates[mode].append(rate)
                cpu[mode].append(us)
                print(f"flood {flood:,} events, {mode:<7} subscribers: {rate:,.0f}/s{closed}",
                      flush=True)  # fmt: skip
    ratio = statistics.median(rates["with"]) / statistics.median(rates["without"])
    p99, alone = delays[args.clients]["p99_ms"], delays[1]["p99_ms"]
    print(f"p99 delay publish -> subscriber: {p99:.1f} ms with {args.clients} subscribers,"
          f" {alone:.1f} ms with one ({p99 / alone:.2f}x)")  # fmt: skip
    print(f"ingest with subscribers / without (medians; goal >= 0.9): {ratio:.2f}")
    bound = statistics.median(cpu["without"]) / statistics.median(cpu["with"])
    print(f"service CPU per event without / with subscribers (medians): {bound:.2f}, the most"
          " the ratio can reach while the service's one event loop is what limits it")  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
