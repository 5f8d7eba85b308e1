"""Connect storm: the live API's p99 latency (``GET /spaces/{id}/count``) while 1,000 DPUs
connect at once with credentials (amqtt checks each password with Argon2), against the same
p99 with no storm, with the broker inside the service (``serve``) and in a process of its own
(``headcount broker`` + ``serve --broker``). Also whether counting went on: one DPU, connected
before the storm, publishes events all through it: how many the broker acknowledged within the
window, and the count as the window ends (NaN: the service did not answer).

    python bench/connect_storm.py [--quick] [--dpus N]

Every DPU user shares one password (one Argon2 hash written on every line): each connection
costs the broker one full verification all the same. Each round starts fresh services, so no
password has been seen before (a broker restarted under its DPUs); targets take turns, and each
figure is the median over the rounds. The storm comes from bench/_storm.py, a process of its
own. The API is probed open-loop, 100 requests a second whatever the answers, so a stalled
service shows as late answers instead of fewer questions; a request still unanswered when
the window has ended, plus a grace period, counts as lasting until then.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from _harness import ROOT, free_port, percentile, topology_toml
from _service import serve
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

from headcount.clock import now_ms

SPACES = 10
PROBES_PER_S = 100
GRACE_S = 2.0
PASSWORD = "storm-dpu-password"
TARGETS = ("in-process", "own process")


def storm_files(workdir: Path, dpus: int) -> Path:
    """The DPUs' password file and an amqtt override that requires it; the override's path."""
    hashed = PasswordHash((Argon2Hasher(),)).hash(PASSWORD)
    passwd = workdir / "dpus.passwd"
    passwd.write_text("".join(f"dpu{n}:{hashed}\n" for n in range(dpus + 1)))
    config = workdir / "storm.yaml"
    config.write_text(
        "plugins:\n"
        "  headcount.ingest.broker.ServiceAuthPlugin:\n"
        "    allow_anonymous: false\n"
        f"    password_file: {passwd}\n"
    )
    return config


@contextlib.asynccontextmanager
async def own_broker(config: Path, port: int) -> AsyncIterator[str]:
    """``headcount broker`` on ``port``; yields the service's URL it prints."""
    env = {k: v for k, v in os.environ.items() if k != "HEADCOUNT_BROKER_PASSWORD"}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-P", "-m", "headcount", "broker", "--mqtt-port", str(port),
        "--broker-config", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, env=env,
    )  # fmt: skip
    assert process.stdout is not None
    try:
        yield (await asyncio.wait_for(process.stdout.readline(), 60)).decode().strip()
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 30)
        except TimeoutError:
            process.kill()
            await process.wait()


@contextlib.asynccontextmanager
async def target(name: str, workdir: Path, config: Path) -> AsyncIterator[tuple[str, int]]:
    """A service whose broker runs as ``name`` says; yields its HTTP URL and MQTT port."""
    port = free_port()
    topology = workdir / "topology.toml"
    topology.write_text(topology_toml(1, spaces=SPACES))
    store = f"sqlite+aiosqlite:///{workdir / 'bench.db'}"
    if name == "in-process":
        extra = ["--broker-config", str(config)]
        async with serve(
            workdir, topology, store, mqtt_port=port, extra=extra, stop_timeout_s=10
        ) as running:
            yield running.url, port
    else:
        async with (
            own_broker(config, port) as broker_url,
            serve(workdir, topology, store, broker_url=broker_url, stop_timeout_s=10) as running,
        ):
            yield running.url, port


async def storm(
    url: str, port: int, workdir: Path, *, dpus: int, events: int, seconds: float
) -> dict[str, float]:
    """The API's figures during a storm, with the storm's own and the count at its end."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "bench" / "_storm.py"), "--port", str(port),
        "--dpus", str(dpus), "--password", PASSWORD, "--seconds", str(seconds),
        "--events", str(events), "--ts", str(now_ms() - 600_000),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), 60)
    if line.strip() != b"storm":
        raise RuntimeError(f"the storm did not start: {line!r}")
    figures = await probe(url, seconds=seconds)
    counted = await count(url)
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    if process.returncode != 0:
        raise RuntimeError(f"bench/_storm.py failed ({process.returncode})")
    return {**figures, **json.loads(out), "counted": counted}


async def probe(url: str, *, seconds: float) -> dict[str, float]:
    """GET a space's live count ``PROBES_PER_S`` times a second for ``seconds``, each request
    on its own; latencies in ms (an unanswered one lasts until the window and grace end)."""
    latencies: list[float] = []
    failed = 0

    async def one(session: aiohttp.ClientSession, path: str, deadline: float) -> None:
        nonlocal failed
        sent = time.perf_counter()
        try:
            async with asyncio.timeout(deadline - sent), session.get(url + path) as response:
                await response.read()
                failed += response.status != 200
            latencies.append((time.perf_counter() - sent) * 1000)
        except (TimeoutError, aiohttp.ClientError):
            latencies.append((deadline - sent) * 1000)

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session, asyncio.TaskGroup() as tg:
        started = time.perf_counter()
        deadline = started + seconds + GRACE_S
        for n in range(int(seconds * PROBES_PER_S)):
            await asyncio.sleep(max(0.0, started + n / PROBES_PER_S - time.perf_counter()))
            tg.create_task(one(session, f"/spaces/S{n % SPACES}/count", deadline))
    if failed:
        raise RuntimeError(f"{failed} answers were not 200")
    latencies.sort()
    return {
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "max_ms": latencies[-1],
    }


async def count(url: str) -> float:
    """The live count of the publishing DPU's space; NaN when the service does not answer."""
    try:
        async with (
            aiohttp.ClientSession() as session,
            asyncio.timeout(GRACE_S),
            session.get(f"{url}/spaces/S0/count") as response,
        ):
            value: int = (await response.json())["count"]
            return value
    except (TimeoutError, aiohttp.ClientError):
        return float("nan")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small run, in seconds")
    parser.add_argument("--dpus", type=int, default=1000, help="DPUs in the storm")
    args = parser.parse_args()
    rounds, seconds = (1, 2.0) if args.quick else (3, 10.0)
    events = int(20 * seconds)
    print(
        f"{args.dpus} DPUs connect at once with credentials; the API probed"
        f" {PROBES_PER_S}/s for {seconds:g}s quiet, then {seconds:g}s from the storm's start;"
        f" {events} events published meanwhile; {rounds} round(s); {os.cpu_count()} CPUs"
    )
    results: dict[str, list[tuple[dict[str, float], dict[str, float]]]] = {}
    with tempfile.TemporaryDirectory(prefix="hc-bench-storm-") as tmp:
        config = storm_files(Path(tmp), args.dpus)
        for r in range(rounds):
            for name in TARGETS:
                workdir = Path(tmp) / f"{name.replace(' ', '-')}-{r}"
                workdir.mkdir()
                async with target(name, workdir, config) as (url, port):
                    await probe(url, seconds=0.5)  # warm-up
                    quiet = await probe(url, seconds=seconds)
                    stormy = await storm(
                        url, port, workdir, dpus=args.dpus, events=events, seconds=seconds
                    )
                results.setdefault(name, []).append((quiet, stormy))
                print(
                    f"round {r + 1} {name:<12} p99 quiet {quiet['p99_ms']:.1f} ms, storm"
                    f" {stormy['p99_ms']:.1f} ms; {stormy['accepted']:.0f} CONNACKs;"
                    f" counted {stormy['counted']:.0f}/{stormy['acked']:.0f}",
                    flush=True,
                )
    print(
        f"{'broker':<12} {'quiet p99 ms':>12} {'storm p99 ms':>12} {'storm max ms':>12}"
        f" {'ratio':>6} {'CONNACKs':>9} {'acked':>7} {'counted':>9}"
    )
    for name in TARGETS:
        runs = results[name]
        quiet_p99 = statistics.median(q["p99_ms"] for q, _ in runs)
        storm_p99 = statistics.median(s["p99_ms"] for _, s in runs)
        storm_max = statistics.median(s["max_ms"] for _, s in runs)
        accepted = statistics.median(s["accepted"] for _, s in runs)
        acked = statistics.median(s["acked"] for _, s in runs)
        counted = statistics.median(s["counted"] for _, s in runs)
        print(
            f"{name:<12} {quiet_p99:>12.1f} {storm_p99:>12.1f} {storm_max:>12.1f}"
            f" {storm_p99 / quiet_p99:>6.1f} {accepted:>9.0f} {acked:>4.0f}/{events}"
            f" {counted:>9.0f}"
        )
    ratios = {
        name: statistics.median(s["p99_ms"] / q["p99_ms"] for q, s in runs)
        for name, runs in results.items()
    }
    print(
        "ratio storm/quiet p99 (goal <= 2): "
        + ", ".join(f"{name} {ratio:.1f}" for name, ratio in ratios.items())
    )


if __name__ == "__main__":
    asyncio.run(main())
