"""Soak: ``headcount serve`` on PostgreSQL through Mosquitto for 10 minutes while the simulator
publishes at a steady rate and the faults of tests/faults are injected over and over: the
service killed -9 and restarted, Mosquitto restarted, PostgreSQL stopped and started.

    python bench/soak.py [--quick] [--minutes M] [--rate N] [--no-faults]

``--quick`` runs one minute (CI). Mosquitto and PostgreSQL are the run's own (tests/servers.py:
free ports, a temporary directory), never the machine's. The figures: faults injected by kind,
events sent, stored, lost, doubled, wrong answers (live and past, against the reference fold);
the service's resident memory after warm-up and at the end; and every warning or error the
service logged that no injected fault explains. It fails (exit 1) unless lost and doubled are
0, every answer is right, the end RSS is within 10% of the warm-up RSS and no warning is
unexplained.

The service is killed early on (at a fifth of the run); its memory is measured a tenth of the
run after that restart and again at the end, so both figures are of one process.
``--no-faults`` runs and measures the same with nothing injected: what the faults cost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import re
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from _harness import ROOT

sys.path.insert(0, str(ROOT))  # the fault tests' servers and reference fold

from headcount.domain.events import Traversal
from tests.faults.support_process import (
    SEED,
    START,
    mosquitto_config,
    tally,
    write_topology,
)
from tests.serve_process import ServeProcess
from tests.servers import MosquittoServer, PostgresCluster, run_blocking

#: What the injected faults make the service log, and nothing else may appear at WARNING or
#: above: lost broker connections, a store that is down (ingest holds its batch, snapshots
#: wait, past counts answer 503, the shard's lock cannot be checked and is taken again once
#: PostgreSQL is back), and paho's own line for a connection reset.
EXPLAINED = re.compile(
    r"lost MQTT connection|store unavailable, batch held|snapshots of space \S+ not written"
    r"|final snapshots not written \(|headcount\.http\.errors GET .*event store"
    r"|ERROR mqtt failed to receive on socket"
    r"|cannot check its lock \(cannot reach the event store|its lock's connection broke; the lock"
    r" is held again"
)
LEVEL = re.compile(r"^\S+ \S+ (WARNING|ERROR|CRITICAL) ")
#: Simulated people per event the simulator plans for the building (about 3 events each).
EVENTS_PER_PERSON = 3


@dataclass
class Soak:
    seconds: float
    rate: float
    #: False: the same run and measurements without any fault (to tell what the faults cost).
    inject: bool = True
    faults: Counter[str] = field(default_factory=Counter)
    rss_warm_kib: int = 0
    rss_end_kib: int = 0
    #: (seconds into the run, RSS KiB) of the service, every tenth of the run from warm-up on.
    rss_series: list[tuple[float, int]] = field(default_factory=list)


def rss_kib(pid: int) -> int:
    """Resident memory of a process, from /proc (KiB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def unexplained(log: str) -> list[str]:
    return [line for line in log.splitlines() if LEVEL.match(line) and not EXPLAINED.search(line)]


async def simulate(workdir: Path, topology: Path, broker: str, soak: Soak) -> list[Traversal]:
    """``headcount simulate`` at ``soak.rate`` events/s for about ``soak.seconds``; the
    events it sent, once every one of them was acknowledged by the broker."""
    out = workdir / "events.jsonl"
    people = max(1, int(soak.rate * soak.seconds / EVENTS_PER_PERSON))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-P", "-m", "headcount", "simulate",
        "--broker", broker, "--topology", str(topology),
        "--seed", str(SEED), "--start", START, "--duration", "8h",
        "--people", str(people), "--rate", str(soak.rate),
        "--out", str(out), "--drain-timeout", "300",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"simulate failed:\n{stderr.decode()[-3000:]}")
    summary = json.loads(stdout)
    print(
        f"simulator: {summary['events']:,} events, {summary['acknowledged']:,} acknowledged,"
        f" {summary['reconnections']} reconnections, {summary['seconds']:.0f} s",
        flush=True,
    )
    lines = out.read_text(encoding="utf-8").splitlines()
    return sorted({Traversal(**json.loads(line)) for line in lines if line}, key=lambda t: t.key)


async def inject(
    soak: Soak, service: ServeProcess, broker: MosquittoServer, postgres: PostgresCluster
) -> None:
    """The fault schedule: the service killed at a fifth of the run, its memory measured a
    tenth later; Mosquitto and PostgreSQL restarted in turn every tenth of the run."""
    began = time.monotonic()
    tenth = soak.seconds / 10

    async def at(fraction: float) -> None:
        await asyncio.sleep(max(0.0, began + fraction * soak.seconds - time.monotonic()))

    for step in range(1, 10):
        await at(step / 10)
        if step >= 3 and service.process is not None:
            soak.rss_series.append((time.monotonic() - began, rss_kib(service.process.pid)))
        if not soak.inject:
            if step == 3:
                assert service.process is not None
                soak.rss_warm_kib = rss_kib(service.process.pid)
            continue
        if step == 2:
            await service.stop(9)
            await service.start()
            soak.faults["service killed -9"] += 1
        elif step == 3:
            assert service.process is not None
            soak.rss_warm_kib = rss_kib(service.process.pid)
        elif step % 2:
            await run_blocking(broker.restart)
            soak.faults["Mosquitto restarted (SIGTERM)"] += 1
        else:
            await run_blocking(postgres.stop)
            await asyncio.sleep(min(5.0, tenth / 2))  # the outage's length, not a wait
            await run_blocking(postgres.start)
            soak.faults["PostgreSQL stopped and started"] += 1


async def run(soak: Soak, workdir: Path) -> bool:
    topology = write_topology(workdir)
    with (
        MosquittoServer(workdir / "mosquitto", mosquitto_config()) as broker,
        PostgresCluster(workdir / "postgres") as postgres,
    ):
        service = ServeProcess(
            workdir, topology, broker.url, "headcount-soak", store_url=postgres.url
        )
        await service.start()
        faults = asyncio.create_task(inject(soak, service, broker, postgres))
        sent = await simulate(workdir, topology, broker.url, soak)
        await faults
        result = await tally("soak", sum(soak.faults.values()), service, service.store_url, sent)
        assert service.process is not None
        soak.rss_end_kib = rss_kib(service.process.pid)
        await service.stop()
    log = service.log.read_text(encoding="utf-8", errors="replace")
    strange = unexplained(log)
    ratio = soak.rss_end_kib / soak.rss_warm_kib
    print(f"faults: {dict(soak.faults)}")
    print(result)
    print(
        f"service RSS: {soak.rss_warm_kib / 1024:.1f} MiB after warm-up,"
        f" {soak.rss_end_kib / 1024:.1f} MiB at the end ({ratio:.3f}x; limit 1.10x)"
    )
    series = ", ".join(f"{t:.0f} s {kib / 1024:.1f}" for t, kib in soak.rss_series)
    print(f"service RSS (MiB) from warm-up on: {series}")
    print(f"warnings no injected fault explains: {len(strange)}")
    for line in strange[:20]:
        print(f"  {line}")
    return result.ok and ratio <= 1.10 and not strange


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one minute (CI)")
    parser.add_argument("--minutes", type=float, help="length of the run (default 10)")
    parser.add_argument("--rate", type=float, default=100.0, help="events/s (default 100)")
    parser.add_argument(
        "--no-faults", action="store_true", help="inject nothing: the baseline of the same run"
    )
    args = parser.parse_args()
    minutes = args.minutes or (1.0 if args.quick else 10.0)
    soak = Soak(seconds=minutes * 60, rate=args.rate, inject=not args.no_faults)
    print(
        f"python bench/soak.py{' --quick' if args.quick else ''}"
        f"{' --no-faults' if args.no_faults else ''}: {minutes:g} min at"
        f" {args.rate:g} events/s on {platform.node()} ({platform.machine()},"
        f" python {platform.python_version()})",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="headcount-soak-") as tmp:
        ok = asyncio.run(run(soak, Path(tmp)))
    print("soak: ok" if ok else "soak: FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
