"""End to end: ``headcount serve`` as a subprocess, DPUs as plain MQTT clients, answers over
HTTP. Run against the embedded amqtt broker (hosted by the test, so it outlives a killed
service) and a real Mosquitto."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import msgpack
import pytest

from headcount.domain.events import Traversal
from headcount.domain.timefmt import format_ms
from headcount.ingest import wire
from headcount.ingest.mqtt import parse_broker_url
from tests.mqtt_fixtures import MqttNames
from tests.serve_process import ServeProcess

SECOND = 1000


@dataclass
class Site:
    """A test's own topology: DPU x over the outside door of A, DPU z between A and B, both
    hanging inside A (the seed's shape, with DPU ids no other test uses)."""

    x: str
    z: str

    def toml(self) -> str:
        return f"""
[[spaces]]
id = "A"
name = "Space A"

[[spaces]]
id = "B"
name = "Space B"

[[doorways]]
id = "X"
name = "Doorway X"
links = [{{ space = "A", sensor_placement = 1 }}]

[[doorways]]
id = "Z"
name = "Doorway Z"
links = [{{ space = "A", sensor_placement = 1 }}, {{ space = "B", sensor_placement = -1 }}]

[[assignments]]
dpu = "{self.x}"
doorway = "X"
valid_from = "2018-01-01T00:00:00Z"

[[assignments]]
dpu = "{self.z}"
doorway = "Z"
valid_from = "2018-01-01T00:00:00Z"
"""

    def expected(self, events: Iterable[Traversal]) -> dict[str, int]:
        """The fold rule by hand: A gets +direction from both DPUs, B -direction from z."""
        counts = {"A": 0, "B": 0}
        for t in sorted(set(events), key=lambda t: (t.ts, t.dpu_id, t.seq)):
            counts["A"] = max(0, counts["A"] + t.direction)
            if t.dpu_id == self.z:
                counts["B"] = max(0, counts["B"] - t.direction)
        return counts


class Service(ServeProcess):
    """``headcount serve`` in a subprocess, on a test's own :class:`Site`."""

    def __init__(self, tmp: Path, site: Site, broker_url: str, client_id: str) -> None:
        topology = tmp / "topology.toml"
        topology.write_text(site.toml())
        super().__init__(tmp, topology, broker_url, client_id)

    async def counts(self) -> dict[str, int]:
        result = {}
        for space in ("A", "B"):
            status, body = await self.get(f"/space/{space}/count")
            assert status == 200, body
            assert isinstance(body, dict)
            result[space] = body["count"]
        return result

    async def wait_for(self, expected: dict[str, int], timeout: float = 10.0) -> None:
        got: dict[str, int] = {}
        try:
            async with asyncio.timeout(timeout):
                while (got := await self.counts()) != expected:
                    await asyncio.sleep(0.05)
        except TimeoutError:
            raise AssertionError(
                f"counts {got}, expected {expected}\n{self.log.read_text()}"
            ) from None


@pytest.fixture
def site(mqtt_names: MqttNames) -> Site:
    return Site(x=f"{mqtt_names.token}-x", z=f"{mqtt_names.token}-z")


@pytest.fixture
async def service(
    tmp_path: Path, site: Site, broker_url: str, mqtt_names: MqttNames
) -> AsyncIterator[Service]:
    running = Service(tmp_path, site, broker_url, mqtt_names.client_id("service"))
    await running.start()
    yield running
    await running.stop(signal.SIGKILL)


@pytest.fixture
async def dpu(broker_url: str) -> AsyncIterator[aiomqtt.Client]:
    address = parse_broker_url(broker_url)
    async with aiomqtt.Client(
        address.host, address.port, username=address.username, password=address.password
    ) as client:
        yield client


async def send(
    client: aiomqtt.Client, dpu_id: str, *events: Traversal, batch: bool = False
) -> None:
    topic = wire.traversals_topic(dpu_id)
    if batch:
        await client.publish(topic, wire.encode(list(events)), qos=1)
    else:
        for event in events:
            await client.publish(topic, wire.encode(event), qos=1)


def now() -> int:
    return time.time_ns() // 1_000_000


async def test_duplicates_out_of_order_late_and_backlog(
    service: Service, site: Site, dpu: aiomqtt.Client
) -> None:
    t = now() - 3600 * SECOND
    sent: list[Traversal] = []

    async def publish(dpu_id: str, *events: Traversal, batch: bool = False) -> None:
        sent.extend(events)
        await send(dpu, dpu_id, *events, batch=batch)

    x = [Traversal(site.x, i, t + i * SECOND, 1) for i in range(1, 6)]
    await publish(site.x, *x)
    await service.wait_for(site.expected(sent))
    await publish(site.x, x[0], x[3])  # duplicates
    await publish(site.z, Traversal(site.z, 2, t + 20 * SECOND, 1))
    await publish(site.z, Traversal(site.z, 1, t + 10 * SECOND, -1))  # out of order
    await service.wait_for(site.expected(sent))
    # A DPU back online uploads its backlog as one batch, older than what is folded.
    backlog = [
        Traversal(site.z, 100 + i, t - 600 * SECOND + i, -1 if i % 2 else 1) for i in range(40)
    ]
    await publish(site.z, *backlog, batch=True)
    await service.wait_for(site.expected(sent))
    # And a day late.
    await publish(site.x, Traversal(site.x, 0, t - 86_400 * SECOND, -1))
    await service.wait_for(site.expected(sent))
    # The past answers the same from snapshot + log.
    status, body = await service.get(f"/space/A/count?ts={format_ms(t + 3 * SECOND)}")
    assert status == 200
    assert isinstance(body, dict)
    assert body["count"] == site.expected(e for e in sent if e.ts <= t + 3 * SECOND)["A"]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        pytest.param(b"\xc1\xff", "not_msgpack", id="not-msgpack"),
        pytest.param(
            msgpack.packb({"seq": 1, "ts": 5, "direction": 2}), "bad_direction", id="direction"
        ),
        pytest.param(msgpack.packb({"seq": "1", "ts": 5, "direction": 1}), "bad_field", id="type"),
        pytest.param(msgpack.packb([1, 2]), "bad_shape", id="shape"),
    ],
)
async def test_bad_payloads_are_quarantined_and_change_nothing(
    service: Service, site: Site, dpu: aiomqtt.Client, payload: bytes, reason: str
) -> None:
    good = Traversal(site.x, 1, now() - 60 * SECOND, 1)
    await send(dpu, site.x, good)
    await service.wait_for({"A": 1, "B": 0})
    await dpu.publish(wire.traversals_topic(site.x), payload, qos=1)
    await dpu.publish(wire.traversals_topic("not-in-topology"), wire.encode(good), qos=1)
    await send(dpu, site.x, Traversal(site.x, 2, now() - 30 * SECOND, 1))
    await service.wait_for({"A": 2, "B": 0})
    # The unknown DPU's message came on a topic of its own: nothing orders it before the good
    # ones that followed, so its entry may come after them.
    expected = [
        f'headcount_quarantined_total{{reason="{reason}"}} 1.0',
        'headcount_quarantined_total{reason="unknown_dpu"} 1.0',
    ]
    deadline = time.monotonic() + 10
    while True:
        _, metrics = await service.get("/metrics")
        assert isinstance(metrics, str)
        if all(line in metrics for line in expected) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert [line for line in expected if line not in metrics] == []
    assert await service.counts() == {"A": 2, "B": 0}


async def test_kill_9_mid_burst_loses_nothing_the_broker_accepted(
    tmp_path: Path,
    site: Site,
    broker_url: str,
    mqtt_names: MqttNames,
    dpu: aiomqtt.Client,
) -> None:
    service = Service(tmp_path, site, broker_url, mqtt_names.client_id("service"))
    await service.start()
    t = now() - 3600 * SECOND
    sent: list[Traversal] = []
    killed = False
    for i in range(600):
        dpu_id = site.x if i % 3 else site.z
        event = Traversal(dpu_id, i, t + i * 37, 1 if i % 5 else -1)
        if i % 50 == 0:
            # Batches too, and some repeats of what was sent before.
            batch = [event, *sent[-5:]]
            await send(dpu, dpu_id, *[e for e in batch if e.dpu_id == dpu_id], batch=True)
        else:
            await send(dpu, dpu_id, event)
        sent.append(event)  # the broker accepted it: publish waited for its PUBACK
        if i == 300:
            assert await service.stop(signal.SIGKILL) == -signal.SIGKILL
            killed = True
    assert killed
    await service.start()
    await service.wait_for(site.expected(sent), timeout=30)
    assert await service.stop(signal.SIGTERM) == 0
