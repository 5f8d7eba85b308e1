"""Ingest rate against its limits: events/s from MQTT publish to committed and folded by
headcount, against (1) the same rows inserted into the same schema through the bare driver
(the store's limit, bench/_store_limit.py) and (2) a bare aiomqtt subscriber that only decodes
the same msgpack from the same broker and publisher (the broker's limit).

    python bench/ingest.py [--quick] [--rounds N] [--store sqlite|postgresql ...]
                           [--mode single|batch100 ...] [--broker KIND ...]

Each configuration (store, broker, messages of 1 or 100 events) runs ``--rounds`` rounds, each
interleaved: the limits, then headcount on a fresh store (a new SQLite file, a new PostgreSQL
database made and dropped here). The figure is the median ratio over the rounds with its
range. Also printed: the service process's CPU time per ingested event (utime + stime from
/proc, which load moves less than throughput) and the machine's load.

PostgreSQL runs when ``HEADCOUNT_BENCH_POSTGRES_URL`` (default: the local ``test`` database)
is reachable; brokers: a private Mosquitto (default, when installed), amqtt in a process of its
own, amqtt in the service's process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import asyncpg
from _harness import ROOT, free_port, run_process, topology_toml
from _store_cache import DEFAULT_POSTGRES, POSTGRES_ENV
from _store_limit import fresh_database, postgres_limit, publisher_rows, sqlite_limit
from sqlalchemy.engine import make_url

DPUS = 10
_TICK = os.sysconf("SC_CLK_TCK")


@contextlib.asynccontextmanager
async def amqtt_process() -> AsyncIterator[str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "bench" / "_amqtt_broker.py"), "--port", str(free_port()),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    url = (await asyncio.wait_for(process.stdout.readline(), 30)).decode().strip()
    try:
        yield url
    finally:
        process.terminate()
        await process.wait()


@contextlib.asynccontextmanager
async def mosquitto_process(workdir: Path) -> AsyncIterator[str]:
    """A Mosquitto of the benchmark's own, configured as broker_config/mosquitto.conf advises
    (the machine's may run with defaults that drop queued messages past 1,000)."""
    port = free_port()
    config = workdir / "mosquitto.conf"
    config.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        "max_queued_messages 1000000\nmax_inflight_messages 1000\n"
    )
    process = await asyncio.create_subprocess_exec(
        "mosquitto", "-c", str(config), stderr=asyncio.subprocess.DEVNULL
    )
    try:
        async with asyncio.timeout(10):
            while True:
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", port)) == 0:
                        break
                await asyncio.sleep(0.05)
        yield f"mqtt://127.0.0.1:{port}"
    finally:
        process.terminate()
        await process.wait()


async def publish(broker: str, events: int, batch: int, first_ts: int) -> None:
    await run_process(
        str(ROOT / "bench" / "_publisher.py"), "--broker", broker,
        "--events", str(events), "--batch", str(batch), "--dpus", str(DPUS),
        "--ts", str(first_ts),
    )  # fmt: skip


async def bare_subscriber(broker: str, events: int, batch: int, first_ts: int) -> float:
    """Events/s of the bare subscriber."""
    address = urlsplit(broker)
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "bench" / "_bare_subscriber.py"),
        "--host", address.hostname or "127.0.0.1", "--port", str(address.port or 1883),
        "--events", str(events), stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    assert (await process.stdout.readline()).strip() == b"ready"
    await publish(broker, events, batch, first_ts)
    seconds = float((await asyncio.wait_for(process.stdout.readline(), 120)).decode())
    await process.wait()
    return events / seconds


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


async def headcount(
    url: str, pid: int, broker: str, events: int, batch: int, first_ts: int
) -> tuple[float, float]:
    """Events/s of the service and its CPU microseconds per event over the run. It reads the
    spaces' counts every 50 ms (the Prometheus page costs the service more than a few percent
    at that rate); with one DPU per space and every traversal an entry, their sum is the
    events folded, and an event is folded only once it is stored. The rate counts the events
    folded after the first reading that saw some, over the time since: the events of that
    first reading were received before it, at a time not seen from here (a commit can hold a
    few thousand)."""
    async with aiohttp.ClientSession() as session:
        cpu_before = cpu_seconds(pid)
        publishing = asyncio.create_task(publish(broker, events, batch, first_ts))
        first = done = 0.0
        at_first = 0
        async with asyncio.timeout(300):
            while True:
                async with session.get(f"{url}/spaces") as response:
                    folded = sum(s["count"] for s in (await response.json())["spaces"])
                now = time.perf_counter()
                if folded and not first:
                    first, at_first = now, folded
                if folded >= events:
                    done = now
                    break
                await asyncio.sleep(0.05)
        cpu = cpu_seconds(pid) - cpu_before
        await publishing
    if at_first >= events:
        raise RuntimeError(
            f"all {events:,} events were folded by the first reading: too few to time"
        )
    return (events - at_first) / (done - first), cpu * 1e6 / events


@dataclass
class Figures:
    """One configuration's measurements, a value per round."""

    rates: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)
    limits: dict[str, list[float]] = field(default_factory=dict)

    def add_limit(self, name: str, rate: float) -> None:
        self.limits.setdefault(name, []).append(rate)


def spread(values: list[float], fmt: str) -> str:
    return f"{statistics.median(values):{fmt}} [{min(values):{fmt}}-{max(values):{fmt}}]"


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


async def postgres_reachable(url: str) -> bool:
    try:
        conn = await asyncpg.connect(
            make_url(url).set(drivername="postgresql").render_as_string(False), timeout=5
        )
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    await conn.close()
    return True


async def one_round(
    args: argparse.Namespace, store: str, broker_kind: str, events: int, batch: int, n: int,
    figures: Figures,
) -> None:  # fmt: skip
    """The limits, then headcount, each on a fresh store and broker."""
    from _service import serve  # here: _service imports this module's brokers

    first_ts = time.time_ns() // 1_000_000 - 3_600_000
    topology = topology_toml(DPUS, spaces=DPUS)
    admin = os.environ.get(POSTGRES_ENV, DEFAULT_POSTGRES)
    with tempfile.TemporaryDirectory(prefix="hc-bench-") as tmp:
        workdir = Path(tmp)
        (workdir / "topology.toml").write_text(topology)
        async with contextlib.AsyncExitStack() as stack:
            if broker_kind == "mosquitto":
                broker = await stack.enter_async_context(mosquitto_process(workdir))
            else:
                broker = await stack.enter_async_context(amqtt_process())
            figures.add_limit(
                "bare subscriber", await bare_subscriber(broker, events, batch, first_ts)
            )
            if batch > 1:
                rows = publisher_rows(events, batch, DPUS, first_ts)
                if store == "sqlite":
                    returning, plain = await sqlite_limit(str(workdir / "limit.db"), rows)
                    figures.add_limit("sqlite3 RETURNING", returning)
                    figures.add_limit("sqlite3 plain INSERT", plain)
                else:
                    name = f"hc_bench_ingest_limit_{os.getpid()}"
                    async with fresh_database(admin, name) as url:
                        unnest, copy = await postgres_limit(url, rows)
                    figures.add_limit("asyncpg unnest", unnest)
                    figures.add_limit("asyncpg COPY", copy)
            if store == "sqlite":
                store_url = f"sqlite+aiosqlite:///{workdir / 'bench.db'}"
            else:
                store_url = await stack.enter_async_context(
                    fresh_database(admin, f"hc_bench_ingest_{os.getpid()}")
                )
            extra = (
                []
                if args.snapshot_every is None
                else ["--snapshot-every", str(args.snapshot_every)]
            )
            if broker_kind == "amqtt-in-process":
                port = free_port()
                service = await stack.enter_async_context(
                    serve(
                        workdir, workdir / "topology.toml", store_url, mqtt_port=port, extra=extra
                    )
                )
                target = f"mqtt://127.0.0.1:{port}"
            else:
                service = await stack.enter_async_context(
                    serve(
                        workdir,
                        workdir / "topology.toml",
                        store_url,
                        broker_url=broker,
                        extra=extra,
                    )
                )
                target = broker
            rate, cpu_us = await headcount(
                service.url, service.pid, target, events, batch, first_ts
            )
            figures.rates.append(rate)
            figures.cpu_us.append(cpu_us)
    limits = "  ".join(f"{k} {v[-1]:,.0f}/s" for k, v in figures.limits.items())
    print(f"  round {n + 1}: headcount {rate:,.0f}/s ({cpu_us:.1f} us CPU/event)  {limits}"
          f"  load {load()}", flush=True)  # fmt: skip


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small run, in seconds")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 3, quick 1)")
    parser.add_argument(
        "--snapshot-every", type=int, help="the service's --snapshot-every (default: its own)"
    )
    parser.add_argument("--store", action="append", choices=["sqlite", "postgresql"])
    parser.add_argument("--mode", action="append", choices=["single", "batch100"])
    parser.add_argument(
        "--broker",
        action="append",
        choices=["amqtt-in-process", "amqtt-own-process", "mosquitto"],
        help="only this broker (repeat for several; default: mosquitto, else amqtt in its own"
        " process)",
    )
    args = parser.parse_args()
    rounds = args.rounds or (1 if args.quick else 3)
    # --quick still gives the clock several readings: the first reading that sees events can
    # see a whole commit's worth (thousands), and a run it sees whole is not timed.
    sizes = {"single": (10_000 if args.quick else 20_000, 1),
             "batch100": (100_000 if args.quick else 200_000, 100)}  # fmt: skip
    brokers = args.broker or ["mosquitto" if shutil.which("mosquitto") else "amqtt-own-process"]
    if "mosquitto" in brokers and not shutil.which("mosquitto"):
        brokers.remove("mosquitto")
        print("mosquitto: not installed, skipped")
    stores = args.store or ["sqlite", "postgresql"]
    admin = os.environ.get(POSTGRES_ENV, DEFAULT_POSTGRES)
    if "postgresql" in stores and not await postgres_reachable(admin):
        stores.remove("postgresql")
        print(f"postgresql: {admin} not reachable (set {POSTGRES_ENV}), skipped")
    configs = [
        (store, broker, mode)
        for mode in args.mode or ["batch100", "single"]
        for store in stores
        for broker in brokers
        if mode == "batch100" or store == "sqlite"  # single events: the broker's figure
    ]
    print(f"python bench/ingest.py {' '.join(sys.argv[1:])}; {os.cpu_count()} cores;"
          f" load {load()}; {rounds} round(s)", flush=True)  # fmt: skip
    results: list[tuple[str, Figures]] = []
    for store, broker, mode in configs:
        events, batch = sizes[mode]
        label = f"{store} {broker} {mode}"
        print(f"{label}: {events:,} events", flush=True)
        figures = Figures()
        for n in range(rounds):
            await one_round(args, store, broker, events, batch, n, figures)
        results.append((label, figures))
    print(f"\nsummary (median [min-max] over {rounds} round(s); load {load()})")
    for label, figures in results:
        print(f"{label}: headcount {spread(figures.rates, ',.0f')} events/s,"
              f" {spread(figures.cpu_us, '.1f')} us CPU/event")  # fmt: skip
        for name, rates in figures.limits.items():
            ratios = [r / limit for r, limit in zip(figures.rates, rates, strict=True)]
            print(f"  / {name} {spread(rates, ',.0f')}/s: ratio {spread(ratios, '.2f')}")


if __name__ == "__main__":
    asyncio.run(main())
