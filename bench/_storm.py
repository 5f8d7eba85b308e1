"""A connect storm for bench/connect_storm.py, run as its own process: DPU ``dpu0`` connects
first (with its password) and publishes ``--events`` traversals spread over ``--seconds``;
meanwhile DPUs ``dpu1``..``dpuN`` all connect at once, with credentials, and stay connected.
Prints ``storm`` when the storm starts, then one JSON line: CONNACKs received (accepted and
refused) within the window and events acknowledged by the broker.

The storm's connections are raw asyncio protocols, each sending one pre-encoded CONNECT: on a
2-core machine the storm must cost as little CPU as possible besides what it makes the broker do.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import struct
import time

import aiomqtt

from headcount.domain.events import Traversal
from headcount.ingest import wire


def _string(text: str) -> bytes:
    data = text.encode()
    return struct.pack("!H", len(data)) + data


def connect_packet(client_id: str, username: str, password: str, keepalive: int = 600) -> bytes:
    """An MQTT 3.1.1 CONNECT with username, password and a clean session."""
    variable = _string("MQTT") + bytes([4, 0b1100_0010]) + struct.pack("!H", keepalive)
    body = variable + _string(client_id) + _string(username) + _string(password)
    length, encoded = len(body), bytearray()
    while True:
        length, digit = divmod(length, 128)
        encoded.append(digit | (0x80 if length else 0))
        if not length:
            break
    return bytes([0x10]) + bytes(encoded) + body


class _Dpu(asyncio.Protocol):
    def __init__(self, packet: bytes, tally: dict[str, int]) -> None:
        self.packet = packet
        self.tally = tally
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.packet)

    def data_received(self, data: bytes) -> None:
        if data[:1] == b"\x20" and len(data) >= 4:  # CONNACK
            self.tally["accepted" if data[3] == 0 else "refused"] += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.tally["closed"] += 1


async def publish_spread(
    port: int, password: str, events: int, seconds: float, ts: int, ready: asyncio.Event
) -> int:
    """Connect as dpu0, set ``ready``, publish ``events`` traversals evenly over ``seconds``;
    how many the broker acknowledged."""
    acked = 0
    async with aiomqtt.Client(
        "127.0.0.1", port, username="dpu0", password=password, identifier="dpu0", timeout=seconds
    ) as client:
        ready.set()
        started = time.perf_counter()
        end = started + seconds
        for seq in range(events):
            due = started + seq * seconds / events
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            if time.perf_counter() >= end:
                break  # a broker that does not acknowledge in the window
            payload = wire.encode(Traversal("dpu0", seq + 1, ts + seq, 1))
            with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                async with asyncio.timeout(end - time.perf_counter()):
                    await client.publish(wire.traversals_topic("dpu0"), payload, qos=1)
                acked += 1
    return acked


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dpus", type=int, required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--ts", type=int, required=True, help="first event time (ms)")
    args = parser.parse_args()
    loop = asyncio.get_running_loop()
    tally = {"accepted": 0, "refused": 0, "closed": 0}
    ready = asyncio.Event()
    publishing = asyncio.create_task(
        publish_spread(args.port, args.password, args.events, args.seconds, args.ts, ready)
    )
    await asyncio.wait(
        [publishing, asyncio.create_task(ready.wait())], return_when="FIRST_COMPLETED"
    )
    if publishing.done():
        publishing.result()  # dpu0 could not connect: raise why
    print("storm", flush=True)
    storm_started = time.perf_counter()
    connecting = [
        asyncio.create_task(
            loop.create_connection(
                functools.partial(
                    _Dpu, connect_packet(f"storm-dpu{n}", f"dpu{n}", args.password), tally
                ),
                "127.0.0.1",
                args.port,
            )
        )
        for n in range(1, args.dpus + 1)
    ]
    acked = await publishing
    elapsed = time.perf_counter() - storm_started
    for task in connecting:  # a stalled broker may not even have accepted them all
        task.cancel()
    for task in connecting:
        with contextlib.suppress(asyncio.CancelledError, OSError):
            transport, _ = await task
            transport.close()
    print(json.dumps({**tally, "dpus": args.dpus, "acked": acked, "window_s": elapsed}))


if __name__ == "__main__":
    asyncio.run(main())
