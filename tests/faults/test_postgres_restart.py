"""PostgreSQL (a cluster of the test's own, ``initdb`` + ``pg_ctl`` on a free port) stopped and
started again many times mid-burst, while a DPU gateway publishes at QoS 1 through the test's
Mosquitto: ingest stalls without acknowledging what it holds and resumes when the database is
back; meanwhile the HTTP API answers live counts and 503 (JSON, with a reason) for the past.
Every other outage the service is also killed -9 while it holds messages it could not store:
had it acknowledged any of them, they would be lost."""

from __future__ import annotations

import asyncio
from functools import partial
from pathlib import Path

import aiohttp

from headcount.http.errors import STORE_DOWN
from tests.faults.support_process import (
    STORED,
    TOPOLOGY_SPACES,
    Publisher,
    metric,
    mosquitto_config,
    plan_events,
    scale,
    stores_more,
    tally,
    wait_until,
    write_topology,
)
from tests.serve_process import ServeProcess
from tests.servers import MosquittoServer, PostgresCluster, run_blocking

OUTAGES = 4
RATE = 150  # messages a second
BETWEEN = 50  # events the service stores between two outages
PAST = "2024-03-05T09:00:00Z"


async def _sent_more(publisher: Publisher, than: int) -> bool:
    return len(publisher.sent) > than


async def _answers_while_down(service: ServeProcess) -> None:
    """Live counts answer; the past is 503 with the reason, as JSON."""
    async with aiohttp.ClientSession() as http:
        for space in TOPOLOGY_SPACES:
            async with http.get(f"{service.http}/spaces/{space}/count") as live:
                assert live.status == 200, await live.text()
            async with http.get(f"{service.http}/spaces/{space}/count?ts={PAST}") as past:
                assert past.status == 503, await past.text()
                assert past.content_type == "application/json"
                assert await past.json() == {"detail": STORE_DOWN}


async def test_postgres_restarted_mid_burst_loses_nothing(tmp_path: Path) -> None:
    outages = OUTAGES * scale()
    topology = write_topology(tmp_path)
    with (
        MosquittoServer(tmp_path / "mosquitto", mosquitto_config()) as broker,
        PostgresCluster(tmp_path / "postgres") as postgres,
    ):
        service = ServeProcess(
            tmp_path, topology, broker.url, "headcount-faults", store_url=postgres.url
        )
        await service.start()
        publisher = Publisher(broker.url, plan_events(people=3000 * scale()), rate=RATE)
        stop = asyncio.Event()
        publishing = asyncio.create_task(publisher.run(stop), name="publisher")
        killed = 0
        try:
            for outage in range(outages):
                await stores_more(service, await metric(service, STORED) + BETWEEN)
                await run_blocking(postgres.stop)  # pg_ctl stop -m fast
                # Messages keep coming; none can be stored, so none may be acknowledged.
                stored = await metric(service, STORED)
                await wait_until(
                    partial(_sent_more, publisher, len(publisher.sent) + 20),
                    what="the broker accepting messages while the store is down",
                )
                await _answers_while_down(service)
                assert await metric(service, STORED) == stored
                if outage % 2:
                    await service.stop(9)  # kill -9, holding what it could not store
                    killed += 1
                await run_blocking(postgres.start)
                if outage % 2:
                    await service.start()
            await stores_more(service, await metric(service, STORED) + BETWEEN)
        finally:
            stop.set()
            await publishing
        result = await tally(
            "PostgreSQL stopped and started",
            outages,
            service,
            service.store_url,
            publisher.sent,
        )
        assert await service.stop() == 0
    print(f"\n{result}; of them with the service killed -9 during the outage {killed}")
    assert result.ok, str(result)
