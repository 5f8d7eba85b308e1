"""The MQTT subscriber against real brokers: the embedded amqtt one and Mosquitto."""

from __future__ import annotations

import asyncio
import random
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import aiomqtt
import pytest

from headcount.actors import ActorSystem
from headcount.domain.events import Traversal
from headcount.domain.topology import Topology
from headcount.eventstore.store import EventStore
from headcount.history import History
from headcount.ingest import wire
from headcount.ingest.broker import EmbeddedBroker, free_port
from headcount.ingest.dpus import DpuRegistry
from headcount.ingest.mqtt import (
    Backoff,
    BrokerAddress,
    BrokerUrlError,
    Received,
    Subscriber,
    SubscriberError,
    _ReadAhead,
    parse_broker_url,
)
from headcount.ingest.pipeline import Ingest
from headcount.ingest.tls import ClientTls
from headcount.metrics import Metrics
from tests.mqtt_fixtures import MOSQUITTOS, MqttNames
from tests.polling import eventually
from tests.store_readers import quarantined

FAST = Backoff(initial=0.05, maximum=0.5)


def port_is_free(port: int) -> bool:
    """Whether nothing listens on ``port`` of the loopback address any more."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def subscriber(url: str, client_id: str, topic: str) -> Subscriber:
    return Subscriber(parse_broker_url(url), client_id=client_id, topics=[topic], reconnect=FAST)


async def publish(url: str, topic: str, *payloads: bytes) -> None:
    """Publish at QoS 1, each payload taken by the broker (PUBACK) before the next."""
    address = parse_broker_url(url)
    async with aiomqtt.Client(
        address.host, address.port, username=address.username, password=address.password
    ) as client:
        for payload in payloads:
            await client.publish(topic, payload, qos=1)


async def next_message(messages: AsyncIterator[Received], timeout: float = 5.0) -> Received:
    async with asyncio.timeout(timeout):
        return await anext(messages)


async def publish_until_received(
    url: str, topic: str, messages: AsyncIterator[Received], timeout: float = 10.0
) -> Received:
    """Publish every 0.2 s until ``messages`` yields: for a subscriber that is reconnecting,
    which a message published before it has subscribed again would miss."""
    receiving = asyncio.ensure_future(anext(messages))
    try:
        async with asyncio.timeout(timeout):
            attempt = 0
            while not receiving.done():
                attempt += 1
                await publish(url, topic, f"attempt {attempt}".encode())
                await asyncio.wait({receiving}, timeout=0.2)
    finally:
        receiving.cancel()
    return receiving.result()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mqtt://broker.local", BrokerAddress("broker.local", 1883)),
        ("mqtt://10.0.0.5:1884", BrokerAddress("10.0.0.5", 1884)),
        ("mqtt://svc:s%40cret@h:2000/", BrokerAddress("h", 2000, "svc", "s@cret")),
        ("mqtt://only-user@h", BrokerAddress("h", 1883, "only-user", None)),
        ("mqtts://h", BrokerAddress("h", 8883, tls=ClientTls())),
        (
            "mqtts://svc:pw@h:9000?ca=/etc/ca%20files/ca.pem",
            BrokerAddress("h", 9000, "svc", "pw", ClientTls(Path("/etc/ca files/ca.pem"))),
        ),
    ],
    ids=["host", "port", "credentials", "user", "tls", "tls-private-ca"],
)
def test_parse_broker_url(url: str, expected: BrokerAddress) -> None:
    assert parse_broker_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "http://h",
        "mqtt://",
        "mqtt://h:notaport",
        "mqtt://h/topic",
        "h:1883",
        "mqtt://h?ca=ca.pem",
        "mqtts://h?cafile=ca.pem",
        "mqtts://h?ca=",
        "mqtts://h?ca=a.pem&ca=b.pem",
        "mqtts://h?ca",
    ],
    ids=[
        "http",
        "no-host",
        "bad-port",
        "path",
        "no-scheme",
        "ca-without-tls",
        "unknown-parameter",
        "empty-ca",
        "two-cas",
        "ca-without-value",
    ],
)
def test_parse_broker_url_refuses(url: str) -> None:
    with pytest.raises(BrokerUrlError, match="bad MQTT broker URL"):
        parse_broker_url(url)


def test_broker_url_errors_and_reprs_hide_the_password() -> None:
    with pytest.raises(BrokerUrlError) as caught:
        parse_broker_url("mqtts://svc:topsecret@h/path")
    assert "topsecret" not in str(caught.value)
    address = parse_broker_url("mqtt://svc:topsecret@h")
    assert "topsecret" not in repr(address)
    assert str(address) == "mqtt://svc@h:1883"
    assert str(parse_broker_url("mqtts://svc:topsecret@h")) == "mqtts://svc@h:8883"


def test_backoff_grows_to_its_maximum_without_jitter() -> None:
    delays = Backoff(initial=0.5, maximum=5, factor=2, jitter="none").delays()
    assert [next(delays) for _ in range(7)] == [0.5, 1, 2, 4, 5, 5, 5]


def test_backoff_full_jitter_stays_within_bounds() -> None:
    backoff = Backoff(initial=0.5, maximum=30, factor=2)
    delays = backoff.delays(random.Random(7))
    draws = [next(delays) for _ in range(2000)]
    bounds = [min(30.0, 0.5 * 2.0 ** min(n, 10)) for n in range(2000)]
    assert all(0 <= d <= b for d, b in zip(draws, bounds, strict=True))
    # Jittered, not constant: the capped draws spread over most of [0, 30].
    assert min(draws[10:]) < 3
    assert max(draws[10:]) > 27


@pytest.mark.parametrize(
    "options",
    [(0, 1, 2), (2, 1, 2), (1, 2, 0.5)],
    ids=["zero", "initial-above-maximum", "shrinking"],
)
def test_backoff_refuses_nonsense(options: tuple[float, float, float]) -> None:
    initial, maximum, factor = options
    with pytest.raises(ValueError, match="backoff"):
        Backoff(initial=initial, maximum=maximum, factor=factor)


async def test_first_connection_failure_is_a_clear_error() -> None:
    port = free_port()
    address = BrokerAddress("127.0.0.1", port)
    with pytest.raises(SubscriberError, match=f"127.0.0.1:{port}"):
        async with Subscriber(address, client_id="nobody", topics=["t"]):
            pass


async def test_receives_a_qos1_message(
    broker_url: str, mqtt_client_id: str, mqtt_topic: str
) -> None:
    async with subscriber(broker_url, mqtt_client_id, mqtt_topic) as sub:
        await publish(broker_url, mqtt_topic, b"\x81\xa3seq\x01")
        received = await next_message(sub.messages())
        await sub.ack(received)
    assert (received.topic, received.payload, received.qos) == (
        mqtt_topic,
        b"\x81\xa3seq\x01",
        1,
    )


async def test_unacked_messages_are_redelivered_and_acked_ones_are_not(
    broker_url: str, mqtt_client_id: str, mqtt_topic: str
) -> None:
    topic = mqtt_topic
    async with subscriber(broker_url, mqtt_client_id, mqtt_topic) as sub:
        await publish(broker_url, topic, b"a", b"b", b"c")
        messages = sub.messages()
        a, b, c = [await next_message(messages) for _ in range(3)]
        assert [a.payload, b.payload, c.payload] == [b"a", b"b", b"c"]
        await sub.ack(a)
        await sub.ack(c)  # held back: b, received before c, is not acknowledged
    async with subscriber(broker_url, mqtt_client_id, mqtt_topic) as sub:
        messages = sub.messages()
        again = [await next_message(messages, timeout=10) for _ in range(2)]
        assert [m.payload for m in again] == [b"b", b"c"]
        for message in again:
            await sub.ack(message)
    async with subscriber(broker_url, mqtt_client_id, mqtt_topic) as sub:
        with pytest.raises(TimeoutError):  # nothing comes for a while: the wait is the point
            await next_message(sub.messages(), timeout=0.5)


def test_a_read_ahead_hands_out_what_one_read_took() -> None:
    """``_ReadAhead`` takes what the connection holds in one read and hands it out as paho
    asks, a part of what it holds when asked for more; ``pending()`` counts what is left.
    A socket pair's bytes are there as soon as sent: no wait."""
    mine, theirs = socket.socketpair()
    with mine, theirs:
        mine.setblocking(False)
        ahead = _ReadAhead(mine)
        theirs.sendall(b"\x30\x05hello\x30\x02hi")
        assert ahead.recv(1) == b"\x30"  # one read took all 11 bytes
        assert ahead.pending() == 10
        assert [ahead.recv(1), ahead.recv(5)] == [b"\x05", b"hello"]
        assert [ahead.recv(1), ahead.recv(1), ahead.recv(5)] == [b"\x30", b"\x02", b"hi"]
        assert ahead.pending() == 0
        with pytest.raises(BlockingIOError):  # nothing held, nothing on the socket
            ahead.recv(1)
        theirs.sendall(b"abc")
        assert ahead.recv(3) == b"abc"  # as much as asked: nothing kept
        assert ahead.pending() == 0
        assert ahead.fileno() == mine.fileno()  # the rest is the socket's
        theirs.shutdown(socket.SHUT_WR)
        assert ahead.recv(1) == b""  # the connection closed, as paho expects to see it


async def test_a_burst_of_messages_of_every_size_arrives_whole_and_in_order(
    broker_url: str, mqtt_client_id: str, mqtt_topic: str
) -> None:
    """The subscriber reads a plain connection ahead: the messages that piled up while its
    event loop was busy come in one read, a large one over several, all whole and in order,
    and none is left waiting in what was read ahead (the broker sends no more until they are
    acknowledged: one left there would stop the stream)."""
    rng = random.Random(5)
    payloads = [rng.randbytes(rng.choice((1, 30, 200, 5_000))) for _ in range(300)]
    payloads[150] = rng.randbytes(200_000)  # more than one read ahead takes
    async with subscriber(broker_url, mqtt_client_id, mqtt_topic) as sub:
        assert isinstance(sub._client._client._sock, _ReadAhead)  # type: ignore[union-attr]
        messages = sub.messages()
        publisher = threading.Thread(
            target=asyncio.run, args=(publish(broker_url, mqtt_topic, *payloads),)
        )
        publisher.start()
        time.sleep(1.0)  # noqa: ASYNC251  # the loop held: what the broker sends piles up
        received = []
        for _ in payloads:  # acknowledged as they come: a broker holds back past its window
            received.append(await next_message(messages, timeout=20))
            await sub.ack(received[-1])
        await asyncio.to_thread(publisher.join)
    assert [m.payload for m in received] == payloads


async def test_messages_already_received_are_read_without_a_wait_each(
    broker_url: str, mqtt_client_id: str, mqtt_topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aiomqtt's iterator makes a task and waits on it for every message: three turns of the
    event loop each, most of the loop's time under single-event messages. Messages already
    in its queue are taken from there; the iterator is awaited only when none is."""
    waits = 0
    anext_of_aiomqtt = aiomqtt.client.MessagesIterator.__anext__

    async def counted(self: aiomqtt.client.MessagesIterator) -> aiomqtt.Message:
        nonlocal waits
        waits += 1
        return await anext_of_aiomqtt(self)

    monkeypatch.setattr(aiomqtt.client.MessagesIterator, "__anext__", counted)
    payloads = [str(n).encode() for n in range(60)]
    async with subscriber(broker_url, mqtt_client_id, mqtt_topic) as sub:
        messages = sub.messages()
        await publish(broker_url, mqtt_topic, *payloads)
        received = []
        for _ in payloads:
            received.append(await next_message(messages))
            await sub.ack(received[-1])
    assert [m.payload for m in received] == payloads
    assert waits < len(payloads) / 2, f"{waits} waits for {len(payloads)} messages"


@pytest.mark.parametrize("broker_url", ["amqtt"], indirect=True)
async def test_a_message_acknowledged_late_is_kept_until_then(
    broker_url: str, mqtt_client_id: str, mqtt_topic: str
) -> None:
    """MQTT sets no time limit on a PUBACK; amqtt alone forgets a message after 5 s without
    one. With headcount's fix (``ingest._amqtt_redelivery``) a message held longer and then
    dropped with the connection comes again. (Mosquitto needs no fix.)"""
    async with subscriber(broker_url, mqtt_client_id, mqtt_topic) as sub:
        await publish(broker_url, mqtt_topic, b"slow")
        first = await next_message(sub.messages())
        # Held unacknowledged for longer than amqtt's 5 s retry: the duration is the point.
        await asyncio.sleep(5.5)
    async with subscriber(broker_url, mqtt_client_id, mqtt_topic) as sub:
        messages = sub.messages()
        again = await next_message(messages, timeout=3)
        assert (first.payload, again.payload) == (b"slow", b"slow")
        await sub.ack(again)
    async with subscriber(broker_url, mqtt_client_id, mqtt_topic) as sub:
        with pytest.raises(TimeoutError):  # nothing comes for a while: the wait is the point
            await next_message(sub.messages(), timeout=0.5)


async def test_messages_published_while_away_arrive_on_return(
    broker_url: str, mqtt_client_id: str, mqtt_topic: str
) -> None:
    async with subscriber(broker_url, mqtt_client_id, mqtt_topic):
        pass  # the broker now holds a persistent session subscribed to the topic
    await publish(broker_url, mqtt_topic, b"one", b"two")
    async with subscriber(broker_url, mqtt_client_id, mqtt_topic) as sub:
        messages = sub.messages()
        received = [await next_message(messages) for _ in range(2)]
        for message in received:
            await sub.ack(message)
    assert [m.payload for m in received] == [b"one", b"two"]


async def test_reconnects_after_another_client_takes_the_session(
    broker_url: str, mqtt_client_id: str, mqtt_topic: str
) -> None:
    address = parse_broker_url(broker_url)
    async with subscriber(broker_url, mqtt_client_id, mqtt_topic) as sub:
        messages = sub.messages()
        intruder = aiomqtt.Client(
            address.host,
            address.port,
            username=address.username,
            password=address.password,
            identifier=sub.client_id,
            clean_session=False,
        )
        async with intruder:
            pass  # connecting with our client id cuts our connection
        received = await publish_until_received(broker_url, mqtt_topic, messages)
        await sub.ack(received)
    assert received.payload.startswith(b"attempt")


async def test_keeps_yielding_across_a_restart_of_the_embedded_broker(tmp_path: Path) -> None:
    broker = EmbeddedBroker(port=0, data_dir=tmp_path)
    topic = "dpus/restart/traversals"
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(broker)
        sub = await stack.enter_async_context(
            Subscriber(
                parse_broker_url(broker.url), client_id="svc", topics=[topic], reconnect=FAST
            )
        )
        messages = sub.messages()
        await publish(broker.url, topic, b"before")
        before = await next_message(messages)
        await sub.ack(before)

        await broker.__aexit__(None, None, None)
        await eventually(lambda: port_is_free(broker.port), what="the old broker's port freed")
        await broker.__aenter__()  # same port and credentials; the old sessions are gone

        after = await publish_until_received(broker.url, topic, messages)
        await sub.ack(after)
    assert before.payload == b"before"
    assert after.payload.startswith(b"attempt")


async def test_ack_of_a_message_from_an_earlier_connection_is_ignored(
    broker_url: str, mqtt_client_id: str, mqtt_topic: str
) -> None:
    stale = Received(mqtt_topic, b"old", mid=1, qos=1)
    async with subscriber(broker_url, mqtt_client_id, mqtt_topic) as sub:
        await sub.ack(stale)  # nothing to acknowledge on this connection: no error
        await publish(broker_url, mqtt_topic, b"new")
        received = await next_message(sub.messages())
        await sub.ack(received)
    assert received.payload == b"new"


# -- topics that are not UTF-8 -------------------------------------------------------------


def _mqtt_string(data: bytes) -> bytes:
    return struct.pack("!H", len(data)) + data


def _packet(first_byte: int, body: bytes) -> bytes:
    length, encoded = len(body), b""
    while True:
        digit, length = length % 128, length // 128
        encoded += bytes([digit | (0x80 if length else 0)])
        if not length:
            return bytes([first_byte]) + encoded + body


async def raw_publish(url: str, topic: bytes, payload: bytes) -> bool:
    """Publish at QoS 1 as a DPU would, but with ``topic`` as raw bytes (which no client library
    sends unless they are UTF-8); whether the broker acknowledged it (PUBACK)."""
    address = parse_broker_url(url)
    reader, writer = await asyncio.open_connection(address.host, address.port)
    try:
        connect = _mqtt_string(b"MQTT") + bytes([4, 0x02]) + struct.pack("!H", 30)
        writer.write(
            _packet(0x10, connect + _mqtt_string(b"raw-dpu-" + random.randbytes(4).hex().encode()))
        )
        async with asyncio.timeout(5):
            assert await reader.readexactly(4) == b"\x20\x02\x00\x00"  # CONNACK, accepted
        writer.write(_packet(0x32, _mqtt_string(topic) + struct.pack("!H", 7) + payload))
        await writer.drain()
        async with asyncio.timeout(5):
            answer = await reader.read(4)
        if not answer:
            return False  # the broker closed the connection
        assert answer == b"\x40\x02\x00\x07"  # PUBACK of packet 7
        return True
    finally:
        writer.close()


@pytest.mark.parametrize("broker_url", ["amqtt"], indirect=True)
async def test_a_topic_that_is_not_utf8_reaches_the_subscriber_as_published(
    broker_url: str, mqtt_names: MqttNames
) -> None:
    """amqtt acknowledges such a publish; it used to mangle the topic (the repr of its bytes,
    which matches no subscription), and paho could not decode it either: the message
    vanished. Now it arrives with its bytes kept (surrogate escapes), and is acknowledged."""
    topic = f"dpus/{mqtt_names.dpu_id}-\xff/traversals".encode("latin-1")
    client_id = mqtt_names.client_id()
    async with subscriber(broker_url, client_id, wire.SUBSCRIPTION) as sub:
        assert await raw_publish(broker_url, topic, b"\x81\xa3seq\x01")
        received = await next_message(sub.messages())
        assert received.topic == topic.decode("utf-8", "surrogateescape")
        assert received.payload == b"\x81\xa3seq\x01"
        await sub.ack(received)
    async with subscriber(broker_url, client_id, wire.SUBSCRIPTION) as sub:
        with pytest.raises(TimeoutError):  # not delivered again: the wait is the point
            await next_message(sub.messages(), timeout=0.5)


@pytest.mark.parametrize("broker_url", MOSQUITTOS, indirect=True)
async def test_mosquitto_refuses_a_topic_that_is_not_utf8(
    broker_url: str, mqtt_names: MqttNames
) -> None:
    """Mosquitto closes the connection, as MQTT says a server must: the publisher is told,
    nothing was accepted, so there is nothing for headcount to account for."""
    topic = f"dpus/{mqtt_names.dpu_id}-\xff/traversals".encode("latin-1")
    assert not await raw_publish(broker_url, topic, b"\x81\xa3seq\x01")


# -- ingest over MQTT: everything published under dpus/ is accounted for -----------------


def site(dpu_id: str) -> Topology:
    return Topology.from_toml(
        f"""
[[spaces]]
id = "A"
name = "Space A"

[[doorways]]
id = "X"
name = "Doorway X"
links = [{{ space = "A", sensor_placement = 1 }}]

[[assignments]]
dpu = "{dpu_id}"
doorway = "X"
valid_from = "2018-01-01T00:00:00Z"
"""
    )


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.wait([task])


async def test_everything_published_under_dpus_is_counted_or_quarantined(
    broker_url: str, mqtt_names: MqttNames, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The service's subscription (``dpus/#``) through ingest, on each broker: a traversal is
    counted; a topic of another shape, a status that is no status, and (where the broker
    accepts one: amqtt) a topic that is not UTF-8 are quarantined; a status from a DPU no
    topology knows is counted and marks nothing online."""
    dpu, ghost = mqtt_names.dpu_id, f"{mqtt_names.dpu_id}-ghost"
    now = int(time.time() * 1000)
    metrics, dpus = Metrics(), DpuRegistry()
    async with AsyncExitStack() as stack:
        url = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
        store = await stack.enter_async_context(await EventStore.open(url))
        system = await stack.enter_async_context(ActorSystem(History(store, site(dpu))).running())
        sub = await stack.enter_async_context(
            subscriber(broker_url, mqtt_names.client_id(), wire.SUBSCRIPTION)
        )
        ingest = Ingest(
            sub.messages(), sub.ack, store=store, actors=system, dpus=dpus, metrics=metrics
        )
        stack.push_async_callback(stop, asyncio.create_task(ingest.run()))

        event = wire.encode(Traversal(dpu, 1, now - 1000, 1))
        await publish(broker_url, wire.traversals_topic(dpu), event)
        await publish(broker_url, f"dpus/{dpu}/traversals/extra", event)
        await publish(broker_url, wire.status_topic(dpu), b"maybe")
        await publish(broker_url, wire.status_topic(ghost), b"online")
        invalid = f"dpus/{dpu}-\xff/traversals".encode("latin-1")
        accepted = await raw_publish(broker_url, invalid, event)
        assert accepted == (request.node.callspec.params["broker_url"] == "amqtt")

        expected = {
            f"mqtt:dpus/{dpu}/traversals/extra": "bad_topic",
            f"mqtt:dpus/{dpu}/status": "bad_status",
        }
        if accepted:
            expected[f"mqtt:dpus/{dpu}-\\udcff/traversals"] = "bad_topic"
        found: dict[str, str] = {}
        deadline = time.monotonic() + 10
        while found != expected:
            assert time.monotonic() < deadline, f"quarantined {found}, expected {expected}"
            await asyncio.sleep(0.02)
            entries = await quarantined(store)
            found = {e.origin: e.reason.split(":")[0] for e in entries if dpu in e.origin}

        def unknown_status() -> float:
            labels = {"outcome": "unknown_dpu"}
            return metrics.registry.get_sample_value("headcount_status_messages_total", labels) or 0

        await eventually(lambda: unknown_status() >= 1, what="the ghost's status counted")
        await eventually(lambda: system.live("A").count == 1, what="the traversal counted")
        assert dpus.get(ghost).online is None
        assert dpus.get(dpu).online is None  # 'maybe' is no status
        assert await store.log.count_traversals() == 1


async def test_a_shard_subscribes_to_thousands_of_topics(
    broker_url: str, mqtt_client_id: str, mqtt_names: MqttNames
) -> None:
    # A shard subscribes to two topics per DPU; they go in several SUBSCRIBE packets.
    topics = [mqtt_names.topic(f"{mqtt_names.dpu_id}-{n}") for n in range(1200)]
    address = parse_broker_url(broker_url)
    async with Subscriber(address, client_id=mqtt_client_id, topics=topics, reconnect=FAST) as sub:
        for topic in (topics[0], topics[-1]):
            await publish(broker_url, topic, b"x")
            received = await next_message(sub.messages())
            await sub.ack(received)
            assert received.topic == topic
