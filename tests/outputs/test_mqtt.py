"""MQTT out against a real Mosquitto (started for these tests on a free port), read by a
real aiomqtt subscriber. Each test publishes under topics of its own."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from headcount.domain.topology import Space, Topology
from headcount.ingest.mqtt import BrokerAddress
from headcount.outputs.alerts import Alert, AlertState
from headcount.outputs.mqtt import MqttOut
from headcount.outputs.payloads import Topics
from tests.outputs.proxy import proxy
from tests.outputs.watch import FAST, HOST, watching
from tests.polling import eventually

TS = 1_764_500_000_000

TOPOLOGY = Topology(
    [Space("lobby", "Lobby", capacity=40), Space("hall", "Hall"), Space("a/b", "Unpublishable")],
    [],
    [],
)


@asynccontextmanager
async def running(out: MqttOut) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(out.run())
    try:
        yield task
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def publisher(port: int, topics: Topics, **options: object) -> MqttOut:
    return MqttOut(
        BrokerAddress(HOST, port),
        TOPOLOGY,
        client_id=f"out-{uuid.uuid4().hex[:8]}",
        topics=topics,
        reconnect=FAST,
        **options,  # type: ignore[arg-type]
    )


async def test_states_are_retained_and_throttled_with_the_last_value_always_sent(
    mosquitto: int, topics: Topics
) -> None:
    out = publisher(mosquitto, topics, interval_s=1.0)
    lobby = topics.state("lobby")
    async with watching(mosquitto, f"{topics.root}/#") as seen, running(out):
        out.offer("lobby", TS, 5)  # the state at the start, before the broker is reached
        out.offer("hall", TS, 0)
        out.offer("a/b", TS, 3)  # no topic can name it: left out
        await eventually(lambda: seen.counts(lobby) == [5], what="the start state")
        for n in range(6, 16):  # a burst, all within one interval
            out.offer("lobby", TS + n, n)
        await eventually(lambda: seen.counts(lobby) == [5, 15], what="the last value")
        assert json.loads(seen.on(lobby)[-1]) == {
            "count": 15,
            "ts": "2025-11-30T10:53:20.015Z",
            "capacity": 40,
            "utilization": 0.375,
        }
        assert seen.counts(topics.state("hall")) == [0]
        assert seen.on(topics.status) == [b"online"]
        assert not [t for t, _, _ in seen.messages if "a/b" in t]
    # A subscriber that comes later gets the newest state, retained; and the status.
    async with watching(mosquitto, f"{topics.root}/#") as late:
        await eventually(lambda: bool(late.on(lobby)) and bool(late.on(topics.status)))
        assert late.counts(lobby) == [15]
        assert late.on(topics.status) == [b"offline"]  # the stop said so
        assert all(retained for _, _, retained in late.messages)


async def test_a_clean_stop_sends_what_the_throttle_holds_then_offline(
    mosquitto: int, topics: Topics
) -> None:
    out = publisher(mosquitto, topics, interval_s=3600.0)
    lobby = topics.state("lobby")
    async with watching(mosquitto, f"{topics.root}/#") as seen:
        async with running(out):
            await asyncio.wait_for(out.connected.wait(), 10)
            out.offer("lobby", TS, 1)
            out.offer("lobby", TS + 1, 2)  # held for an hour
            out.offer("lobby", TS + 2, 3)
            await eventually(lambda: seen.counts(lobby) == [1])
        await eventually(lambda: seen.on(topics.status)[-1:] == [b"offline"])
        assert seen.counts(lobby) == [1, 3]
        assert seen.on(topics.status) == [b"online", b"offline"]


async def test_alerts_are_published_not_retained(mosquitto: int, topics: Topics) -> None:
    out = publisher(mosquitto, topics)
    async with watching(mosquitto, f"{topics.root}/#") as seen, running(out):
        out.alert(Alert("lobby", TS, AlertState.OVER, 40, 40, 40))
        out.alert(Alert("lobby", TS + 5, AlertState.CLEAR, 38, 40, 40))
        await eventually(lambda: len(seen.on(topics.alerts("lobby"))) == 2)
    first, second = (json.loads(p) for p in seen.on(topics.alerts("lobby")))
    assert first == {
        "space_id": "lobby",
        "ts": "2025-11-30T10:53:20.000Z",
        "state": "over",
        "count": 40,
        "capacity": 40,
        "threshold": 40,
    }
    assert second["state"] == "clear"
    async with watching(mosquitto, topics.alerts("lobby")) as late:
        await asyncio.sleep(0.3)  # nothing retained to deliver
        assert late.messages == []


async def test_home_assistant_discovery_configs_are_retained(
    mosquitto: int, topics: Topics
) -> None:
    out = publisher(mosquitto, topics, homeassistant=True)
    async with running(out):
        await asyncio.wait_for(out.connected.wait(), 10)
    async with watching(mosquitto, f"{topics.discovery}/#") as seen:
        await eventually(lambda: len(seen.messages) == 4, what="2 spaces x 2 entities")
    by_topic = {topic: json.loads(payload) for topic, payload, _ in seen.messages}
    assert set(by_topic) == {
        f"{topics.discovery}/{kind}/headcount_{space}/config"
        for kind in ("sensor", "binary_sensor")
        for space in ("lobby", "hall")
    }
    sensor = by_topic[f"{topics.discovery}/sensor/headcount_lobby/config"]
    assert sensor["state_topic"] == topics.state("lobby")
    assert sensor["availability_topic"] == topics.status
    assert sensor["value_template"] == "{{ value_json.count }}"
    assert sensor["unique_id"] == "headcount_lobby_count"
    assert sensor["device"]["name"] == "Lobby"


async def test_a_lost_connection_publishes_the_will_then_everything_again(
    mosquitto: int, topics: Topics
) -> None:
    lobby = topics.state("lobby")
    async with proxy(mosquitto) as through, watching(mosquitto, f"{topics.root}/#") as seen:
        out = publisher(through.port, topics, interval_s=0.05, keepalive=5)
        async with running(out):
            out.offer("lobby", TS, 1)
            await eventually(lambda: seen.counts(lobby) == [1])
            through.down = True
            through.cut()  # no DISCONNECT: to the broker, the publisher died
            await eventually(
                lambda: seen.on(topics.status) == [b"online", b"offline"], what="the will"
            )
            for n in range(2, 7):  # while the broker is away, spaced beyond the interval
                out.offer("lobby", TS + n, n)
                await asyncio.sleep(0.06)
            through.down = False
            await eventually(
                lambda: seen.on(topics.status)[-1:] == [b"online"], what="the reconnection"
            )
            await eventually(lambda: seen.counts(lobby)[-1:] == [6])
    # Only the newest state waited for the broker; the intermediate ones are lost.
    assert seen.counts(lobby) == [1, 6]
