"""What the benchmarks share: free ports, a service subprocess, a load generator process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import statistics
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import aiohttp

from headcount.ingest.broker import free_port as free_port

ROOT = Path(__file__).resolve().parent.parent


def topology_toml(dpus: int, spaces: int = 1) -> str:
    """``spaces`` rooms, each with its own outside door; DPUs spread over the doors."""
    parts = []
    for s in range(spaces):
        parts.append(f'[[spaces]]\nid = "S{s}"\nname = "Space {s}"\n')
        parts.append(
            f'[[doorways]]\nid = "D{s}"\nname = "Door {s}"\n'
            f'links = [{{ space = "S{s}", sensor_placement = 1 }}]\n'
        )
    for d in range(dpus):
        parts.append(
            f'[[assignments]]\ndpu = "dpu{d}"\ndoorway = "D{d % spaces}"\n'
            'valid_from = "2000-01-01T00:00:00Z"\n'
        )
    return "\n".join(parts)


@contextlib.asynccontextmanager
async def service(
    workdir: Path,
    topology: str,
    *,
    broker_url: str | None,
    mqtt_port: int | None = None,
    extra: Sequence[str] = (),
) -> AsyncIterator[str]:
    """``headcount serve`` in a subprocess on free ports (``extra``: more of its flags);
    yields its HTTP base URL."""
    (workdir / "topology.toml").write_text(topology)
    http = free_port()
    args = [
        sys.executable, "-P", "-m", "headcount", "serve",
        "--topology", str(workdir / "topology.toml"),
        "--store", f"sqlite+aiosqlite:///{workdir / 'bench.db'}",
        "--http-port", str(http),
        "--client-id", f"bench-{os.getpid()}-{http}",
    ]  # fmt: skip
    if broker_url is not None:
        args += ["--broker", broker_url]
    else:
        args += ["--mqtt-port", str(mqtt_port or free_port())]
    args += extra
    log = (workdir / "service.log").open("wb")
    process = await asyncio.create_subprocess_exec(*args, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{http}"
    try:
        await wait_healthy(url, process)
        yield url
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 60)
        log.close()


async def wait_healthy(url: str, process: asyncio.subprocess.Process) -> None:
    async with aiohttp.ClientSession() as session, asyncio.timeout(60):
        while True:
            if process.returncode is not None:
                raise RuntimeError(f"service exited with {process.returncode}")
            try:
                async with session.get(f"{url}/healthz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)


async def metric(session: aiohttp.ClientSession, url: str, name: str) -> float:
    async with session.get(f"{url}/metrics") as response:
        for line in (await response.text()).splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


async def run_process(*args: str) -> str:
    """Run a helper process (the load generator, or ``-m headcount ...``); return its stdout,
    fail on error. A module runs with ``-P`` (as every ``headcount`` the benches start): its
    code comes from ``PYTHONPATH`` or the installed package, not from the current directory,
    so ``PYTHONPATH=<another tree>`` runs that tree's code (an A/B)."""
    flags = ("-P",) if args[:1] == ("-m",) else ()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *flags,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"{args[0]} failed: {err.decode()}")
    return out.decode()


def percentile(values: list[float], p: float) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(p) - 1]


def stamp() -> float:
    return time.perf_counter()
