"""An amqtt broker in a process of its own for the benchmarks: prints its service URL, then
runs until terminated."""

from __future__ import annotations

import argparse
import asyncio
import signal

from headcount.ingest.broker import EmbeddedBroker


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with EmbeddedBroker("127.0.0.1", args.port) as broker:
        print(broker.url, flush=True)
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
