"""Late event: how long until the live count and historical counts reflect a traversal that
arrives one day late, on a 10-million-event store, against the same traversal arriving on time,
in one run, end to end through ``headcount serve``.

    python bench/late_event.py [--quick] [--events N] [--rounds N]

The store: 10 spaces with 10 DPUs each, the events spread over the year before the store was
built, snapshots refreshed as the service would. It is built through the store's API once and
kept in bench/.data/ (see bench/_store_cache.py); each run serves a copy of it, with a
private broker (Mosquitto when installed, else amqtt), all three in processes of their own.

Each round takes a space the earlier rounds left alone and publishes over MQTT (QoS 1), first an
on-time traversal (``ts`` now), then a late one (``ts`` one day before the space's newest stored
event). After each publish three pollers ask until the answer counts it (entrances up by one:
unlike the count, never absorbed by the floor at zero): the live count, the count a moment after
the event's time (``?ts=``), and the count at the moment of publishing. The figure is the time
from the publish until all three reflect it. The on-time traversal is the limit, measured in
the same round just before the late one: the figure is the median over the rounds of each
round's late / on-time ratio, with its range (and late p50 over on-time p50).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
import aiomqtt
from _harness import percentile, topology_toml
from _service import Service, private_broker, serve
from _store_cache import cached_sqlite, working_copy

from headcount.clock import now_ms
from headcount.domain.events import Direction, Traversal
from headcount.domain.timefmt import format_ms
from headcount.domain.topology import Topology
from headcount.eventstore.store import EventStore
from headcount.history import History
from headcount.ingest import wire
from headcount.ingest.mqtt import parse_broker_url

SPACES = 10
DPUS_PER_SPACE = 10
DAY = 86_400_000
YEAR = 365 * DAY
BATCH = 5000
#: Seqs of the benchmark's own traversals: above any stored (a DPU's seq only grows), distinct
#: per run so a run never collides with a kept store's events.
SEQ_BASE = 10**15
ANSWERS = ("live", "after event", "now")
GOAL = 3.0


def topology() -> str:
    return topology_toml(SPACES * DPUS_PER_SPACE, spaces=SPACES)


def dpu(space: int, k: int) -> str:
    """topology_toml puts DPU d over the door of space d % SPACES."""
    return f"dpu{space + SPACES * k}"


async def build(url: str, events: int) -> None:
    """Each space's share of ``events`` at random times over the year up to now, each DPU's seqs
    rising with time; then the snapshots the service would have written."""
    rng = random.Random(11)
    end = now_ms()
    document = topology()
    async with await EventStore.open(url) as store:
        await store.topologies.record(document, origin="bench/late_event.py")
        for space in range(SPACES):
            stamps = sorted(rng.randrange(end - YEAR, end) for _ in range(events // SPACES))
            batch = []
            for i, ts in enumerate(stamps):
                k = i % DPUS_PER_SPACE
                direction: Direction = 1 if rng.random() < 0.52 else -1
                batch.append(Traversal(dpu(space, k), i // DPUS_PER_SPACE, ts, direction))
                if len(batch) == BATCH:
                    await store.log.append(batch)
                    batch = []
            await store.log.append(batch)
        await History(store, Topology.from_toml(document)).refresh_snapshots(now=end)


async def newest_per_space(store_url: str) -> list[int]:
    async with await EventStore.open(store_url) as store:
        found = []
        for space in range(SPACES):
            newest = await store.log.newest_ts(dpu(space, k) for k in range(DPUS_PER_SPACE))
            assert newest is not None
            found.append(newest)
        return found


async def entrances(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(url) as response:
        if response.status != 200:
            raise RuntimeError(f"GET {url}: {response.status} {await response.text()}")
        value: int = (await response.json())["entrances"]
        return value


async def until_counted(session: aiohttp.ClientSession, url: str, before: int, t0: float) -> float:
    """Seconds from ``t0`` until the answer at ``url`` counts one more entrance."""
    async with asyncio.timeout(120):
        while True:
            found = await entrances(session, url)
            if found > before:
                if found != before + 1:
                    raise RuntimeError(f"GET {url}: entrances {before} -> {found}, expected +1")
                return time.perf_counter() - t0
            await asyncio.sleep(0.001)


async def trial(
    service: Service,
    session: aiohttp.ClientSession,
    mqtt: aiomqtt.Client,
    space: int,
    event: Traversal,
) -> dict[str, float]:
    """Publish ``event`` (a +1 under the space's door) and time each answer reflecting it."""
    base = f"{service.url}/spaces/S{space}/count"
    published_at = max(now_ms(), event.ts)
    urls = {
        "live": base,
        "after event": f"{base}?ts={format_ms(event.ts + 1)}",
        "now": f"{base}?ts={format_ms(published_at)}",
    }
    before = {name: await entrances(session, url) for name, url in urls.items()}
    t0 = time.perf_counter()
    await mqtt.publish(wire.traversals_topic(event.dpu_id), wire.encode(event), qos=1)
    waits = await asyncio.gather(
        *(until_counted(session, url, before[name], t0) for name, url in urls.items())
    )
    times = dict(zip(urls, waits, strict=True))
    times["all"] = max(waits)
    return times


def summary(name: str, trials: list[dict[str, float]]) -> str:
    cells = [
        f"{key} p50 {percentile([t[key] * 1000 for t in trials], 50):7.1f} ms"
        for key in (*ANSWERS, "all")
    ]
    return f"{name:<8} " + "  ".join(cells)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small run, in seconds")
    parser.add_argument("--events", type=int, help="events in the store (default 10,000,000)")
    parser.add_argument("--rounds", type=int, help="on-time + late pairs (default: one a space)")
    args = parser.parse_args()
    events = args.events or (100_000 if args.quick else 10_000_000)
    rounds = args.rounds or (3 if args.quick else SPACES)
    kept = await cached_sqlite(
        "late_event",
        {"events": events, "spaces": SPACES, "dpus_per_space": DPUS_PER_SPACE, "version": 1},
        lambda url: build(url, events),
    )
    print(
        f"{events:,} events in {SPACES} spaces ({DPUS_PER_SPACE} DPUs each) over a year,"
        f" SQLite; {rounds} rounds of one on-time and one late traversal;"
        f" load average {', '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    ontime: list[dict[str, float]] = []
    late: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="hc-bench-late-") as tmp:
        workdir = Path(tmp)
        started = time.perf_counter()
        store_url = working_copy(kept, workdir)
        print(f"store copied in {time.perf_counter() - started:.1f}s", flush=True)
        newest = await newest_per_space(store_url)
        (workdir / "topology.toml").write_text(topology())
        seq = SEQ_BASE + time.time_ns() // 1_000_000 * 100
        async with (
            private_broker(workdir) as broker,
            serve(
                workdir, workdir / "topology.toml", store_url, broker_url=broker,
                ready_timeout_s=900, stop_timeout_s=300,
            ) as service,
            aiohttp.ClientSession() as session,
        ):  # fmt: skip
            print(f"service ready (start-up recovery) in {service.ready_s:.1f}s", flush=True)
            address = parse_broker_url(broker)
            async with aiomqtt.Client(address.host, address.port) as mqtt:
                for r in range(rounds):
                    space, sensor = r % SPACES, dpu(r % SPACES, 0)
                    seq += 2
                    on_time = Traversal(sensor, seq, now_ms(), 1)
                    ontime.append(await trial(service, session, mqtt, space, on_time))
                    late_event = Traversal(sensor, seq + 1, newest[space] - DAY + r, 1)
                    late.append(await trial(service, session, mqtt, space, late_event))
                    print(
                        f"round {r}: space S{space} on-time {ontime[-1]['all'] * 1000:.1f} ms,"
                        f" late {late[-1]['all'] * 1000:.1f} ms",
                        flush=True,
                    )
                    await asyncio.sleep(0.2)
        print(f"service stopped in {service.stop_s or float('nan'):.1f}s")
    print(summary("on-time", ontime))
    print(summary("late", late))
    ratios = [lt["all"] / ot["all"] for lt, ot in zip(late, ontime, strict=True)]
    p50s = statistics.median(t["all"] for t in late) / statistics.median(t["all"] for t in ontime)
    print(f"load average {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(
        f"late / on-time, all answers, per round (goal <= {GOAL:g}):"
        f" median {statistics.median(ratios):.1f} (range {min(ratios):.1f}-{max(ratios):.1f});"
        f" p50 over p50 {p50s:.1f}:"
        f" {'met' if statistics.median(ratios) <= GOAL else 'missed'}"
    )


if __name__ == "__main__":
    asyncio.run(main())
