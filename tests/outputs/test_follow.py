"""The outputs part over real actors and their change feed: MQTT out on a real Mosquitto,
alerts to MQTT and to a webhook receiver that fails, then recovers, while counting goes on."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from headcount.actors import ActorSystem
from headcount.actors.changes import Cause, Change, ChangeFeed
from headcount.actors.reading import Readiness
from headcount.domain.events import Traversal
from headcount.domain.fold import SpaceState
from headcount.domain.topology import Topology
from headcount.eventstore.store import EventStore
from headcount.history import History
from headcount.ingest.mqtt import BrokerAddress
from headcount.metrics import Metrics
from headcount.outputs.config import Webhook
from headcount.outputs.follow import Outputs
from headcount.outputs.mqtt import MqttOut
from headcount.outputs.payloads import Topics
from headcount.outputs.webhooks import SIGNATURE_HEADER, TIMESTAMP_HEADER, Retry, Webhooks, verify
from tests.outputs.receiver import receiving
from tests.outputs.watch import FAST, HOST, watching
from tests.polling import eventually

NOW = 1_764_500_000_000
SECRET = "0123456789abcdef-secret"
TOPOLOGY = """
[[spaces]]
id = "room"
name = "Room"
capacity = 10
alert_at = 0.8

[[spaces]]
id = "hall"
name = "Hall"

[[doorways]]
id = "door"
name = "Door"
links = [{ space = "room", sensor_placement = 1 }, { space = "hall", sensor_placement = -1 }]

[[assignments]]
dpu = "d1"
doorway = "door"
valid_from = "2018-01-01T00:00:00Z"
"""


@pytest.fixture
async def system(tmp_path: Path) -> AsyncIterator[ActorSystem]:
    async with await EventStore.open(f"sqlite+aiosqlite:///{tmp_path / 'store.db'}") as store:
        topology = Topology.from_toml(TOPOLOGY)
        stored = await store.log.append(
            [Traversal("d1", seq, NOW - 60_000 + seq, 1) for seq in range(1, 6)]
        )
        assert len(stored.new) == 5  # 5 people in the room before the start
        system = ActorSystem(History(store, topology), clock=lambda: NOW)
        async with system.running():
            yield system


async def walk(system: ActorSystem, seq: int, direction: int) -> None:
    """One person through the door, stored and counted, as ingest does it."""
    stored = await system.history.store.log.append(
        [Traversal("d1", seq, NOW + seq, 1 if direction > 0 else -1)]
    )
    await system.route(stored.new)


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(f"headcount_{name}_total", labels) or 0.0


async def test_alerts_reach_mqtt_and_a_recovering_webhook_while_counting_goes_on(
    system: ActorSystem, mosquitto: int, topics: Topics, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    metrics = Metrics()
    room = topics.state("room")
    async with (
        receiving(fail=4) as receiver,
        watching(mosquitto, f"{topics.root}/#") as seen,
    ):
        mqtt = MqttOut(
            BrokerAddress(HOST, mosquitto),
            system.topology,
            client_id="out-follow",
            topics=topics,
            interval_s=0.05,
            reconnect=FAST,
        )
        webhooks = Webhooks(
            [Webhook("ops", receiver.url, frozenset({"room"}), SECRET)],
            metrics=metrics,
            retry=Retry(attempts=10),
            clock=lambda: NOW,
            sleep=lambda _: asyncio.sleep(0.01),
        )
        outputs = Outputs(system, system.changes, metrics=metrics, mqtt=mqtt, webhooks=webhooks)
        task = asyncio.create_task(outputs.run())
        await eventually(lambda: seen.counts(room) == [5], what="the state at the start")
        # room: 5 -> 8 (over, threshold ceil(0.8 * 10) = 8) -> 9 -> 7 (clear: 8 - 1) -> 8 (over)
        moves = [1, 1, 1, 1, -1, -1, 1]
        for seq, direction in enumerate(moves, start=100):
            await walk(system, seq, direction)
        await system.drain()
        # Counting did not wait for the failing receiver: every count is in already.
        assert system.live("room").count == 8
        assert system.live("hall").count == 1  # 0 (floored) + 2 - 1
        await eventually(lambda: seen.counts(room)[-1:] == [8], what="the last state")
        await eventually(lambda: len(receiver.accepted) == 3, what="the webhook deliveries")
        await eventually(
            lambda: len(seen.on(topics.alerts("room"))) == 3, what="the alerts over MQTT"
        )
        alerts = [json.loads(p) for p in seen.on(topics.alerts("room"))]
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await eventually(
            lambda: seen.on(topics.status)[-1:] == [b"offline"], what="offline on a clean stop"
        )
    expected = [("over", 8), ("clear", 7), ("over", 8)]
    assert [(a["state"], a["count"]) for a in alerts] == expected
    assert all(a["threshold"] == 8 and a["capacity"] == 10 for a in alerts)
    posted = [json.loads(r.body) for r in receiver.accepted]
    assert [(a["state"], a["count"]) for a in posted] == expected
    for r in receiver.accepted:
        assert verify(SECRET, r.headers[TIMESTAMP_HEADER], r.body, r.headers[SIGNATURE_HEADER])
    assert sample(metrics, "alerts", space="room", state="over") == 2
    assert sample(metrics, "alerts", space="room", state="clear") == 1
    assert sample(metrics, "webhook_failures", webhook="ops") == 4
    assert sample(metrics, "webhook_deliveries", webhook="ops") == 3
    assert not seen.on(topics.alerts("hall"))  # no capacity, no alert


class Counts:
    """Live counts held by the test (the LiveCounts protocol), without actors."""

    def __init__(self, topology: Topology, counts: dict[str, int]) -> None:
        self.topology = topology
        self.counts = counts

    def live_state(self, space_id: str) -> SpaceState | None:
        return SpaceState(NOW, self.counts[space_id], 0, 0)

    def readiness(self) -> Readiness:
        return Readiness(len(self.counts), (), 0)

    def mailbox_depth(self) -> int:
        return 0


async def test_falling_behind_the_feed_reads_every_count_again_and_misses_no_crossing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    topology = Topology.from_toml(TOPOLOGY)
    live = Counts(topology, {"room": 5, "hall": 0})
    feed = ChangeFeed()
    metrics = Metrics()
    outputs = Outputs(live, feed, metrics=metrics, subscription_size=2)
    task = asyncio.create_task(outputs.run())
    await eventually(lambda: feed.subscribers == 1)
    for count in (6, 7, 8, 9):  # three in the queue: the feed drops the subscription
        live.counts["room"] = count
        feed.publish(Change("room", NOW + count, count, count, 0, Cause.TRAVERSAL))
    await eventually(lambda: feed.subscribers == 1 and feed.overflows == 1)
    await eventually(lambda: sample(metrics, "alerts", space="room", state="over") == 1)
    assert "outputs fell behind the counts" in caplog.text
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert feed.subscribers == 0
