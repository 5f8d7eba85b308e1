"""The ingest benchmark's baseline, run as its own process: a bare aiomqtt subscriber that
only decodes each msgpack payload. Prints 'ready', then the seconds from its first message
to its ``--events``-th decoded event."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import aiomqtt
import msgpack


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--events", type=int, required=True)
    args = parser.parse_args()
    async with aiomqtt.Client(args.host, args.port) as client:
        await client.subscribe("dpus/+/traversals", qos=1)
        print("ready", flush=True)
        seen = 0
        started = 0.0
        async for message in client.messages:
            if not started:
                started = time.perf_counter()
            decoded = msgpack.unpackb(message.payload)
            seen += len(decoded) if isinstance(decoded, list) else 1
            if seen >= args.events:
                break
        print(f"{time.perf_counter() - started:.6f}", flush=True)
    sys.exit(0)


if __name__ == "__main__":
    asyncio.run(main())
