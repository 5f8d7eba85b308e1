"""A fleet at its own pace through shards, once (the issue's 100,000 DPUs over 50,000 spaces at
one traversal per DPU per minute, through 2 shards, 10 minutes): not a CI benchmark (hence the
underscore), a run to read minute by minute.

    python bench/_fleet.py [--dpus 100000] [--spaces 50000] [--shards 2] [--minutes 10]
                           [--kill-at 6]

Mosquitto (broker_config/mosquitto.conf) and PostgreSQL are the run's own (tests/servers.py).
Shards ``headcount serve --shard I/N`` and a standby for the last shard; the topology is
bench/_harness.topology_toml (each space a room with its own door, DPUs spread over the doors).
A publisher process sends each DPU's traversal once a minute, evenly (``dpus / 60`` a second,
single traversals at QoS 1, DPUs sharing 32 connections), alternating in and out so counts
stay small. At ``--kill-at`` minutes the last shard's owner is killed with SIGKILL; its
standby takes over. Each minute: traversals acknowledged by the broker and ingested (the sum
of the processes' ``headcount_events_ingested_total``), the ingest lag (acknowledged minus
ingested, in events and in seconds of traffic), and the latency of live counts asked of
every process (``GET /spaces/{id}/count``, a random space, 10 a second).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from _harness import ROOT, free_port, metric, percentile, topology_toml

sys.path.insert(0, str(ROOT))

from tests.servers import MosquittoServer, PostgresCluster

CONNECTIONS = 32


async def publisher(broker: str, dpus: int, rate: float, seconds: float) -> None:
    """Each DPU once per ``dpus / rate`` seconds, evenly; prints the acknowledged count each
    second as a JSON line."""
    import aiomqtt

    from headcount.domain.events import Traversal
    from headcount.ingest import wire
    from headcount.ingest.mqtt import parse_broker_url

    address = parse_broker_url(broker)
    acked = 0
    start_ts = time.time_ns() // 1_000_000

    async def connection(n: int) -> None:
        nonlocal acked
        mine = list(range(n, dpus, CONNECTIONS))
        per_s = rate / CONNECTIONS
        async with aiomqtt.Client(
            address.host, address.port, identifier=f"fleet-{n}", max_inflight_messages=1000
        ) as client:
            client.pending_calls_threshold = 10**6
            began = time.monotonic()
            sent = 0
            pending: set[asyncio.Task[None]] = set()
            while time.monotonic() - began < seconds:
                due = int((time.monotonic() - began) * per_s)
                while sent < due:
                    d = mine[sent % len(mine)]
                    lap = sent // len(mine)
                    t = Traversal(
                        f"dpu{d}", lap + 1, start_ts + lap * 60_000, 1 if lap % 2 == 0 else -1
                    )
                    task = asyncio.create_task(
                        client.publish(wire.traversals_topic(t.dpu_id), wire.encode(t), qos=1)
                    )
                    task.add_done_callback(lambda _: _count())
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                    sent += 1
                await asyncio.sleep(0.01)
            await asyncio.gather(*pending)

    def _count() -> None:
        nonlocal acked
        acked += 1

    async def report() -> None:
        while True:
            print(json.dumps({"acked": acked}), flush=True)
            await asyncio.sleep(1)

    reporting = asyncio.create_task(report())
    await asyncio.gather(*(connection(n) for n in range(CONNECTIONS)))
    reporting.cancel()
    print(json.dumps({"acked": acked, "done": True}), flush=True)


async def spawn(args: list[str], log: Path) -> asyncio.subprocess.Process:
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(*args, stdout=out, stderr=out)


async def healthz(session: aiohttp.ClientSession, url: str) -> dict[str, object] | None:
    try:
        async with session.get(f"{url}/healthz") as response:
            body: dict[str, object] = await response.json()
            return body if response.status == 200 else None
    except (aiohttp.ClientError, ValueError):
        return None


async def start_until_ready(
    session: aiohttp.ClientSession, work: Path, name: str, spec: str, store: str, broker: str
) -> tuple[asyncio.subprocess.Process, str]:
    """Start one ``serve --shard`` and wait until it is ready; started again (as a service
    manager would) when it stops first, up to five times, each failure printed."""
    for attempt in range(1, 6):
        port = free_port()
        command = [
            sys.executable, "-P", "-m", "headcount", "serve",
            "--topology", str(work / "topology.toml"), "--store", store, "--broker", broker,
            "--http-port", str(port), "--shard", spec,
        ]  # fmt: skip
        log = work / f"{name}.log"
        process = await spawn(command, log)
        url = f"http://127.0.0.1:{port}"
        while process.returncode is None:
            if await healthz(session, url) is not None:
                break
            await asyncio.sleep(0.5)
        if process.returncode is None:
            return process, url
        last = log.read_text(errors="replace").strip().splitlines()[-1]
        print(f"{name} ({spec}) stopped at start, attempt {attempt}: {last[:300]}", flush=True)
    raise RuntimeError(f"{name} never started: {work / f'{name}.log'}")


async def owns(session: aiohttp.ClientSession, url: str) -> bool:
    """Whether the process at ``url`` says it owns its shard."""
    body = await healthz(session, url)
    shard = body.get("shard") if body is not None else None
    return isinstance(shard, dict) and shard.get("role") == "owner"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dpus", type=int, default=100_000)
    parser.add_argument("--spaces", type=int, default=50_000)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--kill-at", type=float, default=6.0, help="minute of the SIGKILL")
    parser.add_argument("--publish", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--broker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    rate = args.dpus / 60
    if args.publish:
        await publisher(args.broker, args.dpus, rate, args.minutes * 60)
        return
    print(f"python bench/_fleet.py {' '.join(sys.argv[1:])}; load {os.getloadavg()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="hc-fleet-") as tmp:
        work = Path(tmp)
        (work / "topology.toml").write_text(topology_toml(args.dpus, spaces=args.spaces))
        config = (ROOT / "broker_config" / "mosquitto.conf").read_text()
        with (
            MosquittoServer(work / "mosquitto", config) as mosquitto,
            PostgresCluster(work / "postgres") as postgres,
        ):
            await run(args, work, mosquitto.url, postgres.url, rate)


async def run(args: argparse.Namespace, work: Path, broker: str, store: str, rate: float) -> None:
    n = args.shards
    specs = [(f"s{i}", f"{i}/{n}") for i in range(n)] + [("standby", f"{n - 1}/{n}")]
    processes: dict[str, tuple[asyncio.subprocess.Process, str]] = {}
    began_start = time.monotonic()
    async with aiohttp.ClientSession() as session:
        for name, spec in specs:
            processes[name] = await start_until_ready(session, work, name, spec, store, broker)
        print(f"all {len(processes)} processes ready in {time.monotonic() - began_start:.0f} s")
        pub = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--publish", "--broker", broker, "--dpus", str(args.dpus),
            "--minutes", str(args.minutes), stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        acked = 0

        async def read_acks() -> None:
            nonlocal acked
            assert pub.stdout is not None
            async for line in pub.stdout:
                acked = json.loads(line)["acked"]

        reading = asyncio.create_task(read_acks())
        began = time.monotonic()
        latencies: list[float] = []
        killed_at: float | None = None
        recovered_at: float | None = None
        minute = 1
        owners = {name: url for name, (_, url) in processes.items() if name != "standby"}
        print("minute  acked  ingested  lag(events)  lag(s)  live p50/p99 ms  answers")
        while pub.returncode is None or time.monotonic() - began < args.minutes * 60 + 5:
            elapsed = time.monotonic() - began
            if killed_at is None and elapsed > args.kill_at * 60:
                victim = processes[f"s{n - 1}"][0]
                victim.send_signal(signal.SIGKILL)
                killed_at = elapsed
                owners[f"s{n - 1}"] = processes["standby"][1]
                print(f"{elapsed:.0f} s: shard {n - 1}/{n} killed (SIGKILL)", flush=True)
            if (killed_at is not None and recovered_at is None) and await owns(
                session, processes["standby"][1]
            ):
                recovered_at = elapsed
                took = time.monotonic() - began - killed_at
                print(f"{elapsed:.0f} s: the standby owns the shard, {took:.1f} s after the kill")
            for _ in range(10):
                url = random.choice(list(owners.values()))
                space = random.randrange(args.spaces)
                t0 = time.perf_counter()
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"{url}/spaces/S{space}/count") as response:
                        await response.read()
                        if response.status == 200:
                            latencies.append(1000 * (time.perf_counter() - t0))
                await asyncio.sleep(0.1)
            if elapsed >= minute * 60:
                ingested = 0.0
                for url in owners.values():
                    with contextlib.suppress(aiohttp.ClientError):
                        ingested += await metric(session, url, "headcount_events_ingested_total")
                lag = acked - ingested
                p50 = statistics.median(latencies) if latencies else float("nan")
                p99 = percentile(latencies, 99) if len(latencies) > 1 else float("nan")
                print(
                    f"{minute:>6} {acked:>7,} {ingested:>9,.0f} {lag:>11,.0f} {lag / rate:>7.1f}"
                    f"  {p50:>6.1f} / {p99:>6.1f}  {len(latencies)}",
                    flush=True,
                )
                latencies = []
                minute += 1
            if pub.returncode is not None and minute > args.minutes + 1:
                break
        await pub.wait()
        reading.cancel()
        for process, _ in processes.values():
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        for process, _ in processes.values():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), 120)
    print(f"load {os.getloadavg()}")


if __name__ == "__main__":
    asyncio.run(main())
