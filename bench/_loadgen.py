"""HTTP load generator for the benchmarks, run as its own process: ``--connections`` keep-alive
connections, each sending one GET, waiting for the whole answer, then sending the next, for
``--seconds`` after ``--warmup`` seconds. Prints one JSON line: requests, seconds, requests/s,
p50/p99/max latency (ms) and how many answers were not 200.

With ``--requests N`` it sends ``--warmup-requests`` first, then exactly N measured ones, and
with ``--pid`` adds ``cpu_s``: the CPU time (user + system, all threads) that process spent
from the first measured answer's request to the last (``/proc/<pid>/stat``), the cost per
request a benchmark divides out. ``--token`` sends ``Authorization: Bearer TOKEN``.

Plain asyncio protocols with the requests pre-encoded, not an HTTP client library: on a 2-core
machine the load generator shares the CPU with the server it measures, so it must cost as little
per request as possible (it does several times what a single aiohttp server process serves).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import time
from array import array
from pathlib import Path

from _harness import percentile

_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far, every thread's (``/proc``)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # the fields after ``(comm)``, from state
    return (int(fields[11]) + int(fields[12])) / _TICKS_PER_S


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
        if self.load.more(now):
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

    def more(self, now: float) -> bool:
        """Whether a connection that has its answer sends another request."""
        return now < self.stop_at

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


class _CountedLoad(_Load):
    """``warmup`` requests, then exactly ``count`` measured ones; the CPU time process ``pid``
    spends on the measured ones."""

    def __init__(self, requests: list[bytes], warmup: int, count: int, pid: int | None) -> None:
        super().__init__(requests, 0.0, 0.0)
        self.warmup, self.count, self.pid = warmup, count, pid
        self.sent = self.answered = 0
        self.cpu_from = self.cpu_s = 0.0

    def next_request(self) -> bytes:
        self.sent += 1
        return super().next_request()

    def more(self, now: float) -> bool:
        return self.sent < self.warmup + self.count

    def record(self, latency: float, ok: bool) -> None:
        self.answered += 1
        if self.answered <= self.warmup:
            if self.answered == self.warmup:
                self.first = time.perf_counter()
                self.cpu_from = cpu_seconds(self.pid) if self.pid else 0.0
            return
        self.last = time.perf_counter()
        self.latencies.append(latency)
        if not ok:
            self.failed += 1
        if self.answered == self.warmup + self.count and self.pid:
            self.cpu_s = cpu_seconds(self.pid) - self.cpu_from


async def run(host: str, port: int, paths: list[str], connections: int, warmup: float,
              seconds: float, *, count: int = 0, warmup_requests: int = 0, pid: int | None = None,
              token: str | None = None) -> dict[str, float]:  # fmt: skip
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    requests = [
        f"GET {p} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: */*\r\n{auth}\r\n".encode()
        for p in paths
    ]
    load: _Load = (
        _CountedLoad(requests, max(warmup_requests, 1), count, pid)
        if count
        else _Load(requests, warmup, seconds)
    )
    opened = [
        await load.loop.create_connection(lambda: _Connection(load), host, port)
        for _ in range(connections)
    ]
    async with asyncio.timeout(300 if count else warmup + seconds + 30):
        await asyncio.gather(*(protocol.closed for _, protocol in opened))
    latencies = sorted(x * 1000 for x in load.latencies)
    span = load.last - load.first
    cpu = {"cpu_s": load.cpu_s} if isinstance(load, _CountedLoad) and pid else {}
    return cpu | {
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
    parser.add_argument("--requests", type=int, default=0, help="measure exactly N requests")
    parser.add_argument("--warmup-requests", type=int, default=1000)
    parser.add_argument("--pid", type=int, help="with --requests: the server's CPU time")
    parser.add_argument("--token", help="send it as 'Authorization: Bearer TOKEN'")
    args = parser.parse_args()
    with open(args.paths_file) as f:
        paths = [line.strip() for line in f if line.strip()]
    result = asyncio.run(
        run(
            args.host,
            args.port,
            paths,
            args.connections,
            args.warmup,
            args.seconds,
            count=args.requests,
            warmup_requests=args.warmup_requests,
            pid=args.pid,
            token=args.token,
        )
    )
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
