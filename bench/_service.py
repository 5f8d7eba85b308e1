"""``headcount serve`` as a subprocess on a store and broker of the benchmark's choosing, with
what the live-query, late-event and scale benchmarks read from outside it: when it was started,
when it became ready, its resident memory, how long it takes to stop. Also a private broker and
the load generator (bench/_loadgen.py) as processes of their own."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from _harness import ROOT, free_port, run_process
from ingest import amqtt_process, mosquitto_process


@dataclass
class Service:
    """A running ``headcount serve``. ``started`` is ``time.perf_counter()`` at spawn,
    ``ready_s`` the seconds from spawn until ``/healthz`` answered 200."""

    url: str
    process: asyncio.subprocess.Process
    started: float
    ready_s: float = 0.0
    stop_s: float | None = None

    @property
    def pid(self) -> int:
        return self.process.pid


@contextlib.asynccontextmanager
async def serve(
    workdir: Path,
    topology_file: Path,
    store_url: str,
    *,
    broker_url: str | None = None,
    mqtt_port: int | None = None,
    extra: Sequence[str] = (),
    ready_timeout_s: float = 60.0,
    stop_timeout_s: float = 60.0,
) -> AsyncIterator[Service]:
    """Start ``headcount serve`` (embedded amqtt broker on ``mqtt_port``, default a free one,
    unless ``broker_url``; ``extra``: more of its flags), wait until ``/healthz`` says ready;
    on leaving, SIGTERM and wait (SIGKILL after ``stop_timeout_s``; ``stop_s`` stays ``None``
    then)."""
    http = free_port()
    args = [
        sys.executable, "-P", "-m", "headcount", "serve",
        "--topology", str(topology_file), "--store", store_url,
        "--http-port", str(http), "--client-id", f"bench-{os.getpid()}-{http}",
    ]  # fmt: skip
    args += (
        ["--broker", broker_url] if broker_url else ["--mqtt-port", str(mqtt_port or free_port())]
    )
    args += extra
    with (workdir / "service.log").open("ab") as log:
        started = time.perf_counter()
        process = await asyncio.create_subprocess_exec(*args, stdout=log, stderr=log)
        service = Service(f"http://127.0.0.1:{http}", process, started)
        try:
            await _wait_ready(service, ready_timeout_s)
            service.ready_s = time.perf_counter() - started
            yield service
        finally:
            if process.returncode is None:
                stopping = time.perf_counter()
                process.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(process.wait(), stop_timeout_s)
                    service.stop_s = time.perf_counter() - stopping
                except TimeoutError:
                    process.kill()
                    await process.wait()


async def _wait_ready(service: Service, timeout_s: float) -> None:
    async with aiohttp.ClientSession() as session, asyncio.timeout(timeout_s):
        while True:
            if service.process.returncode is not None:
                raise RuntimeError(f"service exited with {service.process.returncode}")
            try:
                async with session.get(f"{service.url}/healthz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.02)


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS (resident now) and VmHWM (peak resident) of a process, in KiB."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0])
    return found


@contextlib.asynccontextmanager
async def private_broker(workdir: Path) -> AsyncIterator[str]:
    """A broker of the benchmark's own (Mosquitto when installed, else amqtt), in its own
    process, so nobody else's publishes reach the service under measurement."""
    if shutil.which("mosquitto"):
        async with mosquitto_process(workdir) as url:
            yield url
    else:
        async with amqtt_process() as url:
            yield url


async def load(
    url: str, paths: list[str], workdir: Path, *, connections: int, warmup: float, seconds: float
) -> dict[str, float]:
    """Run bench/_loadgen.py against ``url`` over ``paths`` (written to a file in
    ``workdir``); its JSON summary."""
    with tempfile.NamedTemporaryFile("w", dir=workdir, suffix=".paths", delete=False) as f:
        f.write("\n".join(paths) + "\n")  # left for the workdir's own clean-up
    port = url.rsplit(":", 1)[1]
    out = await run_process(
        str(ROOT / "bench" / "_loadgen.py"), "--port", port, "--paths-file", f.name,
        "--connections", str(connections), "--warmup", str(warmup), "--seconds", str(seconds),
    )  # fmt: skip
    result: dict[str, float] = json.loads(out)
    return result
