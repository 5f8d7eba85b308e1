"""Scale out: events/s through 1, 2 and 3 ``headcount serve --shard I/N`` processes on one
broker and one PostgreSQL, against one process without ``--shard`` (the limit: sharding must
not cost more than it spreads), and the CPU time each part spends per event (broker,
headcount, PostgreSQL), from which the README's capacity table is worked out.

    python bench/scale_out.py [--quick] [--rounds N] [--events N] [--broker mosquitto|nats]

Each configuration runs on a fresh broker (a private Mosquitto, or a three-node NATS cluster
with its MQTT gateway: tests/nats_fixtures.py) and a fresh database in a PostgreSQL cluster of
the run's own (tests/servers.py), so no session or row of another configuration is left
behind; the configurations alternate within each round (plain, 1, 2, 3 shards, plain, ...).
The load: ``DPUS`` DPUs over as many spaces (one DPU per space, so every event goes to one
shard), each its own MQTT client publishing single traversals at QoS 1 (bench/_publisher.py).
Rate: events / seconds from the first publish until every process's
``headcount_events_ingested_total`` adds up to all of them (committed and routed); then every
space's live count is checked against what was sent. CPU: user + system time from /proc of the
broker's processes, the headcount processes, and the PostgreSQL cluster (postmaster and every
child: backends, WAL writer, checkpointer), over the same window; the publisher's own CPU is
shown apart (DPUs are not ours to pay for).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from _cpu import ChildrenMeter, CpuMeter
from _harness import ROOT, metric, run_process, topology_toml
from _service import Service, serve

sys.path.insert(0, str(ROOT))  # the servers the tests start: Mosquitto, PostgreSQL, NATS

from sqlalchemy import text

from headcount.eventstore.engine import create_engine
from tests.servers import MosquittoServer, PostgresCluster

#: The Mosquitto settings bench/ingest.py uses: nothing queued is dropped under load.
MOSQUITTO_CONF = (
    "allow_anonymous true\npersistence false\n"
    "max_queued_messages 1000000\nmax_inflight_messages 1000\n"
)
CONFIGS = ["plain", "1 shard", "2 shards", "3 shards"]
#: The gateway's redelivery wait: NATS's own default (the tests shorten it).
NATS_ACK_WAIT = "30s"


#: How often each process's ingest counter is read: each read costs the process a /metrics
#: answer (about 2 ms), which polled every 20 ms came to a tenth of a core per process and
#: was charged to headcount, the more so the more processes.
POLL_S = 0.25
#: Seconds of CPU measured with the deployment up and no traffic, before the load.
IDLE_S = 5.0


@dataclass
class Run:
    """One configuration's measurement: CPU seconds under load (``cpu``) and the cores each
    part used idle, before it (``idle``)."""

    events: int
    seconds: float
    cpu: dict[str, float] = field(default_factory=dict)
    idle: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.events / self.seconds

    def us_per_event(self, part: str) -> float:
        return 1e6 * self.cpu[part] / self.events


def shards_of(config: str) -> int:
    """0 for the plain process, else the number of shards."""
    return 0 if config == "plain" else int(config.split()[0])


class Brokers:
    """A fresh broker per configuration: its MQTT URLs (one per node) and its processes."""

    def __init__(self, kind: str, workdir: Path) -> None:
        self.kind = kind
        self.workdir = workdir

    @contextlib.contextmanager
    def fresh(self) -> Iterator[tuple[list[str], list[int]]]:
        directory = Path(tempfile.mkdtemp(prefix="broker-", dir=self.workdir))
        if self.kind == "nats":
            from tests.nats_fixtures import NatsCluster

            with NatsCluster(directory, ack_wait=NATS_ACK_WAIT) as cluster:
                pids = [n.process.pid for n in cluster.nodes if n.process is not None]
                yield cluster.mqtt_urls, pids
            return
        with MosquittoServer(directory, MOSQUITTO_CONF) as mosquitto:
            assert mosquitto.process is not None
            yield [mosquitto.url], [mosquitto.process.pid]


@contextlib.asynccontextmanager
async def database(postgres: PostgresCluster) -> AsyncIterator[str]:
    """A fresh database in the run's PostgreSQL; its URL."""
    name = f"scale_{uuid.uuid4().hex[:10]}"
    admin = create_engine(postgres.url)
    async with admin.connect() as conn:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield postgres.url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        async with admin.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()


async def publish(broker: str, events: int, dpus: int) -> float:
    """bench/_publisher.py: ``events`` single traversals over ``dpus`` DPUs; its CPU seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    await run_process(
        str(ROOT / "bench" / "_publisher.py"), "--broker", broker,
        "--events", str(events), "--dpus", str(dpus), "--batch", "1",
        "--ts", str(time.time_ns() // 1_000_000 - 3_600_000),
    )  # fmt: skip
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


async def ingested(session: aiohttp.ClientSession, services: list[Service]) -> float:
    return sum([await metric(session, s.url, "headcount_events_ingested_total") for s in services])


async def check_counts(session: aiohttp.ClientSession, url: str, spaces: int, events: int) -> None:
    """Every event walked in (+1) at a space of its own DPU: the live counts add up to the
    events, spread as the publisher spread them (asked of one process: every process answers
    every space)."""
    expected = {
        f"S{s}": events // spaces + (1 if s < events % spaces else 0) for s in range(spaces)
    }
    found: dict[str, int] = {}
    try:
        async with asyncio.timeout(60):
            while found != expected:
                async with session.get(f"{url}/spaces") as response:
                    found = {s["id"]: s["count"] for s in (await response.json())["spaces"]}
                if found != expected:
                    await asyncio.sleep(0.2)
    except TimeoutError:
        wrong = {k: (v, expected[k]) for k, v in found.items() if v != expected[k]}
        raise RuntimeError(f"{url}: live counts (found, expected) {wrong}") from None


async def measure(
    config: str,
    workdir: Path,
    brokers: Brokers,
    postgres: PostgresCluster,
    postmaster: int,
    events: int,
    dpus: int,
) -> Run:
    shards = shards_of(config)
    topology = workdir / "topology.toml"
    with brokers.fresh() as (urls, broker_pids):
        async with database(postgres) as store, contextlib.AsyncExitStack() as stack:
            services, folders = [], []
            for index in range(max(1, shards)):
                extra = ["--shard", f"{index}/{shards}"] if shards else []
                folder = workdir / f"{config.replace(' ', '-')}-{index}-{uuid.uuid4().hex[:6]}"
                folder.mkdir()
                folders.append(folder)
                broker = urls[(index + 1) % len(urls)]
                started = serve(folder, topology, store, broker_url=broker, extra=extra)
                try:
                    services.append(await stack.enter_async_context(started))
                except RuntimeError as e:
                    log = (folder / "service.log").read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"{config}, process {index}: {e}\n{log}") from e
            meters: dict[str, CpuMeter] = {
                "broker": CpuMeter(broker_pids),
                "headcount": CpuMeter([s.pid for s in services]),
                "postgresql": ChildrenMeter(postmaster),
            }
            async with aiohttp.ClientSession() as session:
                for meter in meters.values():
                    meter.start()
                await asyncio.sleep(IDLE_S)
                idle = {k: m.stop() / IDLE_S for k, m in meters.items()}
                for meter in meters.values():
                    meter.start()
                began = time.perf_counter()
                publishing = asyncio.create_task(publish(urls[0], events, dpus))
                async with asyncio.timeout(600):
                    while True:
                        if await ingested(session, services) >= events:
                            break
                        await asyncio.sleep(POLL_S)
                seconds = time.perf_counter() - began
                run = Run(events, seconds, {k: m.stop() for k, m in meters.items()}, idle)
                run.cpu["publisher"] = await publishing
                for service, folder in zip(services, folders, strict=True):
                    try:
                        await check_counts(session, service.url, dpus, events)
                    except RuntimeError as e:
                        log = (folder / "service.log").read_text(errors="replace")[-3000:]
                        raise RuntimeError(f"{config}: {e}\n{log}") from None
    return run


def spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def report(results: dict[str, list[Run]], configs: list[str]) -> None:
    plain = results.get("plain") or results[configs[0]]
    print(
        f"\n{'configuration':<14} {'events/s':>9} {'ratio to plain':>22}"
        f" {'broker':>7} {'headcount':>9} {'postgres':>9} {'total':>7} {'publisher':>9}"
        "   (CPU µs per event, medians)"
    )
    for config in configs:
        runs = results[config]
        ratios = [r.rate / p.rate for r, p in zip(runs, plain, strict=True)]
        us = {
            part: statistics.median(r.us_per_event(part) for r in runs)
            for part in ("broker", "headcount", "postgresql", "publisher")
        }
        total = us["broker"] + us["headcount"] + us["postgresql"]
        idle = {
            part: statistics.median(r.idle[part] for r in runs)
            for part in ("broker", "headcount", "postgresql")
        }
        print(
            f"{config:<14} {statistics.median(r.rate for r in runs):>9,.0f}"
            f" {spread(ratios):>22} {us['broker']:>7.0f} {us['headcount']:>9.0f}"
            f" {us['postgresql']:>9.0f} {total:>7.0f} {us['publisher']:>9.0f}"
            f"   idle cores: broker {idle['broker']:.3f}, headcount {idle['headcount']:.3f},"
            f" postgresql {idle['postgresql']:.3f}"
        )


def supports_shards() -> bool:
    import subprocess

    help_text = subprocess.run(
        [sys.executable, "-P", "-m", "headcount", "serve", "--help"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return "--shard" in help_text


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one small round (CI)")
    parser.add_argument("--rounds", type=int, help="rounds of every configuration (default 3)")
    parser.add_argument("--events", type=int, help="events per configuration (default 20,000)")
    parser.add_argument("--dpus", type=int, default=60, help="DPUs, one space each (60)")
    parser.add_argument("--broker", choices=["mosquitto", "nats"], default="mosquitto")
    parser.add_argument(
        "--config", action="append", choices=CONFIGS, help="only this one (repeat; default all)"
    )
    args = parser.parse_args()
    rounds = args.rounds or (1 if args.quick else 3)
    events = args.events or (2_000 if args.quick else 20_000)
    configs = CONFIGS if supports_shards() else ["plain"]
    configs = [c for c in configs if c in (args.config or configs)]
    command = " ".join(["python bench/scale_out.py", *sys.argv[1:]])
    print(f"{command}\n{platform.node()}, {os.cpu_count()} cores, {platform.python_version()}")
    print(f"load before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if configs == ["plain"]:
        print("this headcount has no serve --shard: only the plain process is measured")
    with tempfile.TemporaryDirectory(prefix="hc-scale-out-") as tmp:
        workdir = Path(tmp)
        (workdir / "topology.toml").write_text(topology_toml(args.dpus, spaces=args.dpus))
        brokers = Brokers(args.broker, workdir)
        with PostgresCluster(workdir / "postgres") as postgres:
            postmaster = int((postgres.data / "postmaster.pid").read_text().split()[0])
            results: dict[str, list[Run]] = {c: [] for c in configs}
            for round_ in range(1, rounds + 1):
                for config in configs:
                    run = await measure(
                        config, workdir, brokers, postgres, postmaster, events, args.dpus
                    )
                    results[config].append(run)
                    print(
                        f"round {round_} {config:<9} {run.rate:>8,.0f} events/s,"
                        f" CPU µs/event: broker {run.us_per_event('broker'):.0f},"
                        f" headcount {run.us_per_event('headcount'):.0f},"
                        f" postgresql {run.us_per_event('postgresql'):.0f};"
                        f" idle cores: {', '.join(f'{k} {v:.3f}' for k, v in run.idle.items())}",
                        flush=True,
                    )
    report(results, configs)
    print(f"load after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    asyncio.run(main())
