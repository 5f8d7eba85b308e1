"""Ingest rate: events/s from MQTT publish to committed and applied by headcount, against a
bare aiomqtt subscriber that only decodes the same msgpack from the same broker and publisher.

    python bench/ingest.py [--quick]

Brokers: amqtt in the service's process (the default `headcount serve`), amqtt in a process of
its own (`--broker`), and a private Mosquitto when installed. Publisher (one MQTT client per
DPU), baseline subscriber and service are separate processes. Each rate is measured from the
first event taken in to the last one done (decoded, for the baseline; committed and folded
into the live count, for headcount).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
from _harness import ROOT, free_port, metric, run_process, service, topology_toml

DPUS = 10


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


async def publish(broker: str, events: int, batch: int) -> None:
    await run_process(
        str(ROOT / "bench" / "_publisher.py"), "--broker", broker,
        "--events", str(events), "--batch", str(batch), "--dpus", str(DPUS),
        "--ts", str(time.time_ns() // 1_000_000 - 3_600_000),
    )  # fmt: skip


async def baseline(broker: str, events: int, batch: int) -> float:
    """Events/s of the bare subscriber."""
    address = urlsplit(broker)
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "bench" / "_bare_subscriber.py"),
        "--host", address.hostname or "127.0.0.1", "--port", str(address.port or 1883),
        "--events", str(events), stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    assert (await process.stdout.readline()).strip() == b"ready"
    await publish(broker, events, batch)
    seconds = float((await asyncio.wait_for(process.stdout.readline(), 120)).decode())
    await process.wait()
    return events / seconds


async def headcount(url: str, broker: str, events: int, batch: int) -> float:
    """Events/s of the service: first event stored to last event in the live counts."""
    async with aiohttp.ClientSession() as session:
        publishing = asyncio.create_task(publish(broker, events, batch))
        first = done = 0.0
        async with asyncio.timeout(300):
            while True:
                stored = await metric(session, url, "headcount_events_ingested_total")
                now = time.perf_counter()
                if stored and not first:
                    first = now
                if stored >= events:
                    async with session.get(f"{url}/spaces") as response:
                        counts = [s["count"] for s in (await response.json())["spaces"]]
                    if sum(counts) >= events:
                        done = now
                        break
                await asyncio.sleep(0.02)
        await publishing
    return events / (done - first)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small run, in seconds")
    parser.add_argument(
        "--snapshot-every", type=int, help="the service's --snapshot-every (default: its own)"
    )
    parser.add_argument(
        "--broker",
        action="append",
        choices=["amqtt-in-process", "amqtt-own-process", "mosquitto"],
        help="only this broker (repeat for several; default: all)",
    )
    args = parser.parse_args()
    extra = [] if args.snapshot_every is None else ["--snapshot-every", str(args.snapshot_every)]
    sizes = {"single": (2_000 if args.quick else 20_000, 1),
             "batch100": (10_000 if args.quick else 200_000, 100)}  # fmt: skip
    brokers = args.broker or ["amqtt-in-process", "amqtt-own-process", "mosquitto"]
    if "mosquitto" in brokers and not shutil.which("mosquitto"):
        brokers.remove("mosquitto")
        print("mosquitto: not installed, skipped")
    topology = topology_toml(DPUS, spaces=DPUS)
    print(f"{'broker':<18} {'messages':<9} {'events':>8} {'baseline/s':>11} "
          f"{'headcount/s':>12} {'ratio':>6}")  # fmt: skip
    ratios: dict[str, list[float]] = {"single": [], "batch100": []}
    for broker_kind in brokers:
        for mode, (events, batch) in sizes.items():
            with tempfile.TemporaryDirectory(prefix="hc-bench-") as tmp:
                async with contextlib.AsyncExitStack() as stack:
                    if broker_kind == "mosquitto":
                        broker = await stack.enter_async_context(mosquitto_process(Path(tmp)))
                    else:
                        broker = await stack.enter_async_context(amqtt_process())
                    base = await baseline(broker, events, batch)
                    if broker_kind == "amqtt-in-process":
                        port = free_port()
                        url = await stack.enter_async_context(
                            service(
                                Path(tmp), topology, broker_url=None, mqtt_port=port, extra=extra
                            )
                        )
                        target = f"mqtt://127.0.0.1:{port}"
                    else:
                        url = await stack.enter_async_context(
                            service(Path(tmp), topology, broker_url=broker, extra=extra)
                        )
                        target = broker
                    rate = await headcount(url, target, events, batch)
            ratios[mode].append(rate / base)
            print(f"{broker_kind:<18} {mode:<9} {events:>8} {base:>11,.0f} {rate:>12,.0f} "
                  f"{rate / base:>6.2f}", flush=True)  # fmt: skip
    print(f"ratio single-event (goal >= 0.8): {min(ratios['single']):.2f} (worst broker)")
    print(f"ratio 100-event batches (goal >= 0.5): {min(ratios['batch100']):.2f} (worst broker)")


if __name__ == "__main__":
    asyncio.run(main())
