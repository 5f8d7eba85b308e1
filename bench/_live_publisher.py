"""Load generator for bench/live_push.py, run as its own process: one MQTT client per DPU
(``dpu0`` ...), each publishing single traversals (direction +1) with QoS 1. With ``--rate``,
a steady total rate, each event stamped with the wall clock when published (so a subscriber
can tell how long it took to reach it); without, as fast as a window of publishes in flight
allows. ``--seq`` is the first sequence number, so runs against one service never repeat one.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import aiomqtt

from headcount.domain.events import Traversal
from headcount.ingest import wire
from headcount.ingest.mqtt import parse_broker_url


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def dpu(args: argparse.Namespace, n: int, events: int) -> None:
    address = parse_broker_url(args.broker)
    dpu_id = f"dpu{n}"
    topic = wire.traversals_topic(dpu_id)
    window = 64
    async with aiomqtt.Client(address.host, address.port, max_inflight_messages=window) as client:
        client.pending_calls_threshold = 10 * window
        if args.rate:
            every = args.dpus / args.rate
            start = time.monotonic() + n * every / args.dpus  # spread the DPUs over a period
            for i in range(events):
                pause = start + i * every - time.monotonic()
                if pause > 0:
                    await asyncio.sleep(pause)
                event = Traversal(dpu_id, args.seq + i, now_ms(), 1)
                await client.publish(topic, wire.encode(event), qos=1)
            return
        for first in range(0, events, window):
            ts = now_ms()
            chunk = [
                wire.encode(Traversal(dpu_id, args.seq + i, ts, 1))
                for i in range(first, min(first + window, events))
            ]
            await asyncio.gather(*(client.publish(topic, p, qos=1) for p in chunk))


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--broker", required=True)
    parser.add_argument("--events", type=int, required=True, help="in all")
    parser.add_argument("--dpus", type=int, required=True)
    parser.add_argument("--rate", type=float, default=0.0, help="events/s in all; 0: flood")
    parser.add_argument("--seq", type=int, default=0)
    args = parser.parse_args()
    per_dpu = args.events // args.dpus
    await asyncio.gather(*(dpu(args, n, per_dpu) for n in range(args.dpus)))


if __name__ == "__main__":
    asyncio.run(main())
