"""Load generator for bench/ingest.py, run as its own process: one MQTT client per DPU, like
real DPUs, each publishing its traversals with QoS 1 and a window of publishes in flight."""

from __future__ import annotations

import argparse
import asyncio

import aiomqtt

from headcount.domain.events import Traversal
from headcount.ingest import wire
from headcount.ingest.mqtt import parse_broker_url


async def dpu(
    address_host: str, port: int, dpu_id: str, payloads: list[bytes], window: int
) -> None:
    topic = wire.traversals_topic(dpu_id)
    async with aiomqtt.Client(address_host, port, max_inflight_messages=window) as client:
        client.pending_calls_threshold = 10 * window  # a full window is the point, not a leak
        for first in range(0, len(payloads), window):
            chunk = payloads[first : first + window]
            await asyncio.gather(*(client.publish(topic, p, qos=1) for p in chunk))


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--broker", required=True)
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dpus", type=int, default=10)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--ts", type=int, required=True, help="first event time (ms)")
    args = parser.parse_args()
    address = parse_broker_url(args.broker)
    per_dpu: dict[str, list[bytes]] = {f"dpu{d}": [] for d in range(args.dpus)}
    for n, start in enumerate(range(0, args.events, args.batch)):
        dpu_id = f"dpu{n % args.dpus}"
        events = [
            Traversal(dpu_id, i, args.ts + i, 1)
            for i in range(start, min(start + args.batch, args.events))
        ]
        per_dpu[dpu_id].append(wire.encode(events if args.batch > 1 else events[0]))
    # Anonymous, like a DPU (the service's credentials stay the service's).
    await asyncio.gather(
        *(dpu(address.host, address.port, d, p, args.window) for d, p in per_dpu.items())
    )


if __name__ == "__main__":
    asyncio.run(main())
