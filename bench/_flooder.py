"""A flooding DPU for bench/flood.py, run as its own process: one MQTT client publishing
single traversals at QoS 1 on its own topic at up to ``--rate`` messages/s for ``--seconds``.
Prints one JSON line: messages sent (acknowledged by the broker) and the seconds it took."""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import aiomqtt

from headcount.domain.events import Traversal
from headcount.ingest import wire
from headcount.ingest.mqtt import parse_broker_url

TICK_S = 0.01


async def flood(
    broker: str, dpu_id: str, rate: int, seconds: float, first_seq: int, ts: int, topic: str
) -> dict[str, float]:
    address = parse_broker_url(broker)
    per_tick = max(1, int(rate * TICK_S))
    sent = 0
    async with aiomqtt.Client(address.host, address.port, max_inflight_messages=1000) as client:
        client.pending_calls_threshold = 100_000  # a flood is the point
        started = time.perf_counter()
        next_tick = started
        while time.perf_counter() - started < seconds:
            seq = first_seq + sent
            payloads = [
                wire.encode(Traversal(dpu_id, seq + i, ts + seq + i, 1)) for i in range(per_tick)
            ]
            await asyncio.gather(*(client.publish(topic, p, qos=1) for p in payloads))
            sent += per_tick
            next_tick += TICK_S
            delay = next_tick - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        took = time.perf_counter() - started
    return {"sent": sent, "seconds": took}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--broker", required=True)
    parser.add_argument("--dpu", required=True)
    parser.add_argument("--rate", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--first-seq", type=int, default=1)
    parser.add_argument("--ts", type=int, required=True, help="time of the first event (ms)")
    parser.add_argument(
        "--elsewhere", action="store_true",
        help="publish on a topic outside dpus/ that headcount does not read (the control)",
    )  # fmt: skip
    args = parser.parse_args()
    topic = f"elsewhere/{args.dpu}" if args.elsewhere else wire.traversals_topic(args.dpu)
    result = asyncio.run(
        flood(args.broker, args.dpu, args.rate, args.seconds, args.first_seq, args.ts, topic)
    )
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
