"""kill -9 of ``headcount serve`` many times while a DPU gateway publishes at QoS 1 through a
Mosquitto of the test's own (the project's settings, persistence on): each time the service is
restarted, resumes its persistent session, and in the end nothing the broker accepted is lost
or counted twice."""

from __future__ import annotations

import asyncio
import random
import signal
from pathlib import Path

import pytest

from tests.faults.support_process import (
    SEED,
    Publisher,
    mosquitto_config,
    plan_events,
    scale,
    stores_more,
    tally,
    write_topology,
)
from tests.serve_process import ServeProcess
from tests.servers import MosquittoServer

KILLS = 20
RATE = 150  # messages a second


#: Twenty starts of a Python process: about 50 s on an idle 2-core machine, twice that under
#: load, beyond the suite's 120 s per test.
@pytest.mark.timeout(300)
async def test_kill_9_twenty_times_during_ingest_loses_nothing(tmp_path: Path) -> None:
    kills = KILLS * scale()
    rng = random.Random(SEED)
    topology = write_topology(tmp_path)
    with MosquittoServer(tmp_path / "mosquitto", mosquitto_config()) as broker:
        service = ServeProcess(tmp_path, topology, broker.url, "headcount-faults")
        await service.start()
        publisher = Publisher(broker.url, plan_events(people=3000 * scale()), rate=RATE)
        stop = asyncio.Event()
        publishing = asyncio.create_task(publisher.run(stop), name="publisher")
        during = 0
        try:
            for _ in range(kills):
                # Killed while it ingests: once it has stored something new since it
                # started, at a random moment soon after.
                await stores_more(service, 0)
                await asyncio.sleep(rng.uniform(0, 0.2))  # when the fault strikes, not a wait
                during += not publishing.done()
                assert await service.stop(signal.SIGKILL) == -signal.SIGKILL
                await service.start()
        finally:
            stop.set()
            await publishing
        result = await tally(
            "kill -9 of the service", kills, service, service.store_url, publisher.sent
        )
        assert await service.stop() == 0
    print(f"\n{result}; republished {publisher.republished}")
    assert during == kills, f"{kills - during} kills came after the publisher had sent all"
    assert result.ok, str(result)
    log = service.log.read_text(encoding="utf-8")
    resumed = log.count("(resumed session)")
    assert resumed == kills, f"the service resumed its session {resumed} times:\n{log[-3000:]}"
