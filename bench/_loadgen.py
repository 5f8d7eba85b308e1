"""HTTP load generator for the benchmarks, run as its own process: ``--connections`` keep-alive
connections, each sending one GET, waiting for the whole answer, then sending the next, for
``--seconds`` after ``--warmup`` seconds. Prints one JSON line: requests, seconds, requests/s,
p50/p99/max latency (ms) and how many answers were not 200.

Plain asyncio protocols with the requests pre-encoded, not an HTTP client library: on a 2-core
machine the load generator shares the CPU with the server it measures, so it must cost as little
per request as possible (it does several times what a single aiohttp server process serves).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from array import array

from _harness import percentile


class _Connection(asyncio.Protocol):
    """One keep-alive connection sending a request as soon as the previous answer is in."""

    def __init__(self, load: _Load) -> None:
        self.load = load
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.sent_at = 0.0
        self.closed = load.loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._send()

    def _send(self) -> None:
        assert self.transport is not None
        self.buffer.clear()
        self.sent_at = time.perf_counter()
        self.transport.write(self.load.next_request())

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end]).lower()
        at = head.find(b"\r\ncontent-length:")
        if at < 0:
            raise RuntimeError(f"an answer without Content-Length: {head!r}")
        stop = head.find(b"\r\n", at + 2)
        length = int(head[at + 17 : stop if stop > 0 else len(head)])
        if len(self.buffer) < end + 4 + length:
            return
        now = time.perf_counter()
        self.load.record(now - self.sent_at, head[9:12] == b"200")
        if now < self.load.stop_at:
            self._send()
        else:
            assert self.transport is not None
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class _Load:
    def __init__(self, requests: list[bytes], warmup: float, seconds: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.requests = requests
        self.rng = random.Random(1)
        now = time.perf_counter()
        self.measure_from = now + warmup
        self.stop_at = self.measure_from + seconds
        self.latencies = array("d")
        self.failed = 0
        self.first = self.last = 0.0

    def next_request(self) -> bytes:
        return self.requests[self.rng.randrange(len(self.requests))]

    def record(self, latency: float, ok: bool) -> None:
        now = time.perf_counter()
        if now < self.measure_from or now > self.stop_at:
            return
        if not self.first:
            self.first = now
        self.last = now
        self.latencies.append(latency)
        if not ok:
            self.failed += 1


async def run(host: str, port: int, paths: list[str], connections: int, warmup: float,
              seconds: float) -> dict[str, float]:  # fmt: skip
    requests = [
        f"GET {p} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: */*\r\n\r\n".encode() for p in paths
    ]
    load = _Load(requests, warmup, seconds)
    opened = [
        await load.loop.create_connection(lambda: _Connection(load), host, port)
        for _ in range(connections)
    ]
    async with asyncio.timeout(warmup + seconds + 30):
        await asyncio.gather(*(protocol.closed for _, protocol in opened))
    latencies = sorted(x * 1000 for x in load.latencies)
    span = load.last - load.first
    return {
        "requests": len(latencies),
        "seconds": span,
        "rps": len(latencies) / span if span > 0 else 0.0,
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "max_ms": latencies[-1],
        "not_200": load.failed,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument(
        "--paths-file", required=True, help="one path a line; each request picks one at random"
    )
    args = parser.parse_args()
    with open(args.paths_file) as f:
        paths = [line.strip() for line in f if line.strip()]
    result = asyncio.run(
        run(args.host, args.port, paths, args.connections, args.warmup, args.seconds)
    )
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
