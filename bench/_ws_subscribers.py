"""WebSocket subscribers for bench/live_push.py, run as a process of their own: ``--clients``
connections to ``/live``, client ``c`` subscribed to ``--per-client`` of the ``--spaces``
spaces (``S{(c + k * stride) % spaces}``, so every space has the same number of
subscribers). Prints ``ready`` once every client has its states; on a line on stdin, prints
one JSON line: messages received, clients the server closed (by close code), and the delay of
each ``traversal`` message from its event's ``ts`` (the wall clock when the DPU published it)
to its arrival here, in ms (p50, p99, max).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from datetime import datetime

import aiohttp
from _harness import percentile


class Stats:
    def __init__(self) -> None:
        self.messages = 0
        self.delays: list[float] = []
        self.closed: Counter[str] = Counter()
        self.recording = True


def arrival_delay_ms(ts: str) -> float:
    sent = datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
    return (time.time() - sent) * 1000


async def client(
    session: aiohttp.ClientSession, url: str, spaces: list[str], stats: Stats,
    ready: asyncio.Queue[None],
) -> None:  # fmt: skip
    async with session.ws_connect(f"{url}/live", heartbeat=None) as ws:
        await ws.send_json({"subscribe": spaces})
        for _ in range(len(spaces) + 1):  # the acknowledgement and one state per space
            await ws.receive()
        ready.put_nowait(None)
        async for message in ws:
            if message.type is not aiohttp.WSMsgType.TEXT:
                break
            stats.messages += 1
            if stats.recording and '"traversal"' in message.data:
                stats.delays.append(arrival_delay_ms(json.loads(message.data)["ts"]))
        stats.closed[str(ws.close_code)] += 1


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--spaces", type=int, default=100)
    parser.add_argument("--per-client", type=int, default=5)
    args = parser.parse_args()
    stats, ready = Stats(), asyncio.Queue[None]()
    stride = args.spaces // args.per_client
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        tasks = []
        for c in range(args.clients):
            spaces = [f"S{(c + k * stride) % args.spaces}" for k in range(args.per_client)]
            tasks.append(asyncio.create_task(client(session, args.url, spaces, stats, ready)))
            if c % 50 == 49:
                await asyncio.sleep(0.05)  # no connection storm: the server's accept queue
        for _ in range(args.clients):
            await ready.get()
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        stats.recording = False
        delays = stats.delays or [0.0]
        print(json.dumps({
            "messages": stats.messages,
            "delays": len(stats.delays),
            "p50_ms": percentile(delays, 50),
            "p99_ms": percentile(delays, 99),
            "max_ms": max(delays),
            "closed": dict(stats.closed),
            "open": sum(not t.done() for t in tasks),
        }), flush=True)  # fmt: skip
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


if __name__ == "__main__":
    asyncio.run(main())
