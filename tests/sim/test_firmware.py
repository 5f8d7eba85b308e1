"""The simulated firmware against real brokers (amqtt and Mosquitto): what reaches the wire."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt
import msgpack
import pytest

from headcount.domain.events import Traversal
from headcount.ingest import wire
from headcount.ingest.broker import EmbeddedBroker, free_port
from headcount.ingest.mqtt import Backoff, BrokerAddress, parse_broker_url
from headcount.sim.errors import SimulatorError
from headcount.sim.firmware import run_firmware
from headcount.sim.pace import Speed
from headcount.sim.schedule import Faults, Schedule
from headcount.sim.synthetic import synthetic_topology
from tests.certificates import make_certificates
from tests.mqtt_fixtures import MqttNames
from tests.sim.reference import DAY, HOUR, TUESDAY, plan_run

FAST = Backoff(initial=0.05, maximum=0.2)
#: Small, so that a backlog takes several arrays.
BATCH = 20


def anonymous(broker_url: str) -> BrokerAddress:
    """The broker as DPUs reach it: without the service's credentials."""
    address = parse_broker_url(broker_url)
    return BrokerAddress(address.host, address.port)


def a_day_in(seconds: float) -> Speed:
    return Speed(TUESDAY, DAY / 1000 / seconds)


def gateways(names: MqttNames) -> str:
    """The client id prefix of this test's connections: runs sharing a broker never take
    each other's connections."""
    return f"headcount-test-{names.token}-gw"


def schedule_for(names: MqttNames, faults: Faults | None = None, people: int = 40) -> Schedule:
    """A day of a small synthetic site whose DPU ids are this test's own."""
    toml = synthetic_topology(4, 5, dpu_prefix=f"{names.token}-").to_toml()
    return plan_run(toml, people=people, faults=faults).schedule


@dataclass
class Wire:
    """What a subscriber saw of the DPUs' topics, in order of arrival."""

    payloads: list[tuple[str, bytes]] = field(default_factory=list)
    statuses: dict[str, list[wire.Status]] = field(default_factory=lambda: defaultdict(list))
    #: Every distinct event seen so far.
    received: set[Traversal] = field(default_factory=set)
    #: Set on every message; cleared by whoever waits for the next one.
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, topic: str, payload: bytes) -> None:
        dpu_id, kind = wire.parse_topic(topic)
        if kind == "status":
            if payload:  # not the test clearing the retained status
                self.statuses[dpu_id].append(wire.decode_status(payload))
        else:
            self.payloads.append((topic, payload))
            self.received.update(wire.decode(dpu_id, payload))
        self.arrived.set()

    def events(self) -> dict[str, list[Traversal]]:
        """Each DPU's events in arrival order, repeats included."""
        found: dict[str, list[Traversal]] = defaultdict(list)
        for topic, payload in self.payloads:
            dpu_id, _ = wire.parse_topic(topic)
            found[dpu_id].extend(wire.decode(dpu_id, payload))
        return found

    def arrays(self) -> int:
        """Payloads that were arrays of more than one event (backlog uploads)."""
        return sum(1 for _, p in self.payloads if isinstance(msgpack.unpackb(p), list))

    async def until(self, done: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
        """Wait until ``done()``, checked whenever a message arrives; fail after ``timeout``
        seconds saying ``what`` was awaited."""
        try:
            async with asyncio.timeout(timeout):
                while not done():
                    self.arrived.clear()
                    await self.arrived.wait()
        except TimeoutError:
            raise AssertionError(
                f"not within {timeout} s: {what} ({len(self.received)} events,"
                f" {len(self.payloads)} payloads seen)"
            ) from None

    async def until_all(self, schedule: Schedule) -> None:
        """Wait until every event and every DPU's final "offline" arrived."""
        wanted = set(schedule.traversals())
        await self.until(
            lambda: (
                wanted <= self.received
                and all(
                    [s.online for s in self.statuses[d][-1:]] == [False] for d in schedule.dpu_ids
                )
            ),
            f"all {len(wanted)} events and every DPU offline",
        )


@contextlib.asynccontextmanager
async def watching(url: str, dpu_ids: Sequence[str]) -> AsyncIterator[Wire]:
    """Subscribe to the DPUs' traversals and status; afterwards clear their retained status
    (the Mosquitto is shared)."""
    address = parse_broker_url(url)
    seen = Wire()
    async with aiomqtt.Client(
        address.host, address.port, username=address.username, password=address.password
    ) as client:
        await client.subscribe(
            [(wire.traversals_topic(d), 1) for d in dpu_ids]
            + [(wire.status_topic(d), 1) for d in dpu_ids]
        )

        async def collect() -> None:
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                seen.add(str(message.topic), message.payload)

        collecting = asyncio.create_task(collect())
        try:
            yield seen
        finally:
            collecting.cancel()
            for dpu_id in dpu_ids:
                await client.publish(wire.status_topic(dpu_id), b"", qos=1, retain=True)


class Proxy:
    """A TCP relay to the broker that can be cut and restored: an unreachable broker, for
    brokers the test cannot stop."""

    def __init__(self, target: BrokerAddress) -> None:
        self.target = target
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def address(self) -> BrokerAddress:
        return BrokerAddress("127.0.0.1", self.port)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def stop(self) -> None:
        """Refuse new connections and cut the open ones."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.close()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self.target.host, self.target.port)
        self._writers |= {writer, up_writer}

        async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        self._writers -= {writer, up_writer}


async def test_every_event_once_in_sequence_order_with_status_online_then_offline(
    broker_url: str, mqtt_names: MqttNames
) -> None:
    schedule = schedule_for(mqtt_names)
    async with watching(broker_url, schedule.dpu_ids) as seen:
        stats = await run_firmware(
            schedule,
            anonymous(broker_url),
            a_day_in(1.5),
            connections=2,
            batch=BATCH,
            client_prefix=gateways(mqtt_names),
            backoff=FAST,
        )
        await seen.until_all(schedule)
    assert stats.acknowledged == stats.sent == len(schedule.sends) > 50
    assert stats.buffered == stats.duplicates == stats.retransmitted == 0
    for dpu_id, events in seen.events().items():
        seqs = [e.seq for e in events]
        assert seqs == sorted(set(seqs)), f"{dpu_id}: seq not strictly increasing"
    assert {e for events in seen.events().values() for e in events} == set(schedule.traversals())
    for dpu_id in schedule.dpu_ids:
        assert [s.online for s in seen.statuses[dpu_id]] == [True, False], dpu_id


async def test_statuses_carry_the_delivery_report_with_heartbeats_between(
    broker_url: str, mqtt_names: MqttNames
) -> None:
    faults = Faults(duplicates=0.2, reorder=0.2, reorder_window=3)
    schedule = schedule_for(mqtt_names, faults, people=60)
    async with watching(broker_url, schedule.dpu_ids) as seen:
        await run_firmware(
            schedule, anonymous(broker_url), a_day_in(2.0), connections=2, batch=BATCH,
            client_prefix=gateways(mqtt_names), backoff=FAST, heartbeat=0.1,
        )  # fmt: skip
        await seen.until_all(schedule)
    heartbeats = 0
    for dpu_id in schedule.dpu_ids:
        mine = sorted({t.seq for t in schedule.traversals() if t.dpu_id == dpu_id})
        statuses = seen.statuses[dpu_id]
        # The last says what was sent in all: each seq once, copies and repeats not counted.
        final = statuses[-1].report
        expected = wire.Report(len(mine), mine[0], mine[-1]) if mine else wire.Report(0)
        assert final == expected, dpu_id
        sent = [s.report.sent for s in statuses if s.report is not None]
        assert len(sent) == len(statuses), f"{dpu_id}: a status without its report"
        assert sent == sorted(sent), f"{dpu_id}: the count went down"
        heartbeats += sum(1 for s in statuses[1:-1] if s.online)
    assert heartbeats >= len(schedule.dpu_ids), "too few heartbeats between online and offline"


async def test_store_and_forward_loses_nothing_while_the_broker_is_unreachable(
    broker_url: str, mqtt_names: MqttNames
) -> None:
    schedule = schedule_for(mqtt_names, people=60)
    pace = a_day_in(2.0)
    proxy = Proxy(anonymous(broker_url))  # not started: unreachable at first

    async def cut_and_restore() -> None:
        # The two outages are the point, and how long they last is what makes the backlogs:
        # each is a sleep, measured on the simulated clock the firmware plays by.
        # Unreachable through the morning until 09:00 (the site is in UTC), when about half
        # the people have arrived: those events wait in the DPUs' buffers.
        await asyncio.sleep(pace.offset(TUESDAY + 9 * HOUR))
        await proxy.start()
        # Reachable until the DPUs have uploaded a backlog, then cut again, and more piles up
        # for three simulated hours, over lunch; the DPUs must connect again for the rest.
        await seen.until(lambda: seen.arrays() >= 1, "a backlog uploaded as an array")
        await proxy.stop()
        await asyncio.sleep(pace.offset(TUESDAY + 3 * HOUR))
        await proxy.start()

    async with watching(broker_url, schedule.dpu_ids) as seen:
        try:
            outages = asyncio.create_task(cut_and_restore())
            stats = await run_firmware(
                schedule,
                proxy.address,
                pace,
                connections=2,
                batch=BATCH,
                client_prefix=gateways(mqtt_names),
                backoff=FAST,
            )
            await outages
            await seen.until_all(schedule)
        finally:
            await proxy.stop()
    assert stats.buffered == 0
    assert stats.acknowledged == len(schedule.sends)
    assert stats.reconnections >= 1
    assert seen.arrays() >= 1, "the backlog was not uploaded as arrays"
    for dpu_id, events in seen.events().items():
        first_arrivals = list(dict.fromkeys(e.seq for e in events))
        assert first_arrivals == sorted(first_arrivals), dpu_id
    assert {e for events in seen.events().values() for e in events} == set(schedule.traversals())


async def test_duplicates_reordering_and_outages_reach_the_wire(
    broker_url: str, mqtt_names: MqttNames
) -> None:
    faults = Faults(duplicates=0.2, reorder=0.2, reorder_window=3, offline=0.3)
    schedule = schedule_for(mqtt_names, faults, people=60)
    assert schedule.duplicates
    assert schedule.reordered
    assert schedule.outages
    async with watching(broker_url, schedule.dpu_ids) as seen:
        stats = await run_firmware(
            schedule,
            anonymous(broker_url),
            a_day_in(2.0),
            connections=5,
            batch=BATCH,
            client_prefix=gateways(mqtt_names),
            backoff=FAST,
        )
        await seen.until_all(schedule)
    assert stats.duplicates == schedule.duplicates
    events = seen.events()
    repeated = sum(len(mine) - len(set(mine)) for mine in events.values())
    assert repeated >= schedule.duplicates
    descents = sum(
        1 for mine in events.values() for a, b in itertools.pairwise(mine) if b.seq < a.seq
    )
    assert descents >= 1
    offline_dpus = {outage.dpu_id for outage in schedule.outages}
    for dpu_id in offline_dpus:
        # online, then offline and online again for each outage, and offline at the end.
        assert [s.online for s in seen.statuses[dpu_id]].count(False) >= 2, dpu_id
    assert seen.arrays() >= 1


async def test_a_broker_that_refuses_the_credentials_stops_the_run(tmp_path: Path) -> None:
    async with EmbeddedBroker(port=0, data_dir=tmp_path) as broker:
        address = BrokerAddress(broker.host, broker.port, "headcount", "not-the-password")
        schedule = plan_run(synthetic_topology(2, 2).to_toml(), people=5).schedule
        with pytest.raises(SimulatorError, match=r"refused the connection.*check the user"):
            async with asyncio.timeout(10):
                await run_firmware(
                    schedule, address, a_day_in(5.0), batch=BATCH, connections=1, backoff=FAST
                )


@pytest.mark.filterwarnings("ignore:unclosed <ssl.SSLSocket:ResourceWarning")  # paho's, on refusal
async def test_a_broker_certificate_not_trusted_stops_the_run(tmp_path: Path) -> None:
    """Waiting will not make a certificate trusted: the run stops, naming ``?ca=``."""
    certs = make_certificates(tmp_path / "certs", "localhost")
    async with EmbeddedBroker(port=0, data_dir=tmp_path / "broker", tls=certs.server) as broker:
        address = parse_broker_url(f"mqtts://localhost:{broker.port}")  # system CAs only
        schedule = plan_run(synthetic_topology(2, 2).to_toml(), people=5).schedule
        with pytest.raises(SimulatorError, match=r"not trusted.*\?ca=FILE.*--broker"):
            async with asyncio.timeout(10):
                await run_firmware(
                    schedule, address, a_day_in(5.0), batch=BATCH, connections=1, backoff=FAST
                )
    gc.collect()  # the refused sockets, while their warning is ignored
