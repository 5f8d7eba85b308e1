"""Loss the broker causes is detected: DPUs' delivery reports set against the store.

First through ingest without a broker (the figure's arithmetic, late arrivals, a restart), then
through a Mosquitto the test starts, with the stock queue limits and with the project's
broker_config/mosquitto.conf, and a burst larger than the stock queue against a paused
subscriber.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

import aiomqtt
import pytest

from headcount.actors import ActorSystem
from headcount.domain.events import Traversal
from headcount.domain.topology import Topology
from headcount.eventstore.store import EventStore
from headcount.history import History
from headcount.ingest import wire
from headcount.ingest.broker import EmbeddedBroker, free_port
from headcount.ingest.dpus import Delivery, DpuRegistry
from headcount.ingest.mqtt import Received, Subscriber, parse_broker_url
from headcount.ingest.pipeline import Ingest, IngestSettings
from headcount.metrics import Metrics
from tests.ingest.inbox import Inbox, Msg
from tests.polling import eventually
from tests.servers import MosquittoServer

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT / "examples" / "seed" / "topology.toml"
PROJECT_CONF = ROOT / "broker_config" / "mosquitto.conf"
#: What Debian ships (the defaults, said out loud) and what the machine's Mosquitto runs.
STOCK_CONF = "allow_anonymous true\nmax_queued_messages 1000\nmax_inflight_messages 20\n"
NOW = 1_700_000_000_000
LOSS_LOG = "headcount.ingest.loss"


def traversal(dpu: str, seq: int) -> Msg:
    return Msg(wire.traversals_topic(dpu), wire.encode(Traversal(dpu, seq, NOW - 60_000 + seq, 1)))


def status(dpu: str, sent: int, first: int | None, seq: int | None, online: bool = True) -> Msg:
    report = wire.Report(sent, first, seq)
    return Msg(wire.status_topic(dpu), wire.encode_status(online, report))


class Service:
    """Ingest over ``store`` fed from an :class:`Inbox`; ``deliver`` waits for the acks."""

    def __init__(self, store: EventStore, inbox: Inbox, ingest: Ingest[Msg]) -> None:
        self.store, self.inbox, self.ingest = store, inbox, ingest

    @property
    def dpus(self) -> DpuRegistry:
        return self.ingest.dpus

    def missing_gauge(self, dpu_id: str) -> float | None:
        return self.ingest.metrics.registry.get_sample_value(
            "headcount_dpu_missing_events", {"dpu_id": dpu_id}
        )

    async def deliver(self, *messages: Msg) -> None:
        expected = len(self.inbox.acked) + len(messages)
        self.inbox.put(*messages)
        await eventually(lambda: len(self.inbox.acked) == expected, what="every message acked")


@asynccontextmanager
async def service(store: EventStore) -> AsyncIterator[Service]:
    topology = Topology.from_toml(SEED.read_text())
    inbox = Inbox()
    system = ActorSystem(History(store, topology), clock=lambda: NOW)
    async with system.running():
        ingest: Ingest[Msg] = Ingest(
            inbox.messages(), inbox.ack, store=store, actors=system, dpus=DpuRegistry(),
            metrics=Metrics(), settings=IngestSettings(max_events=1000), clock=lambda: NOW,
        )  # fmt: skip
        task = asyncio.create_task(ingest.run())
        try:
            yield Service(store, inbox, ingest)
        finally:
            task.cancel()
            await asyncio.wait([task])


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOSS_LOG]


async def test_the_figure_is_sent_minus_stored_and_late_arrivals_lower_it(
    store: EventStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, LOSS_LOG)
    async with service(store) as svc:
        # seq 3 and 4 never arrive; the report says 6 were sent from seq 1 to 6.
        await svc.deliver(*(traversal("283", s) for s in (1, 2, 5, 6)), status("283", 6, 1, 6))
        delivery = svc.dpus.get("283").delivery
        assert delivery is not None
        assert (delivery.sent, delivery.stored, delivery.missing) == (6, 4, 2)
        assert svc.missing_gauge("283") == 2
        [warning] = warnings(caplog)
        assert "DPU '283'" in warning
        assert "2 of them are not stored" in warning
        # The same report again, a heartbeat: no second warning for the same figure.
        await svc.deliver(status("283", 6, 1, 6))
        assert len(warnings(caplog)) == 1
        # One of them arrives late (a redelivery out of order): the figure drops at once.
        await svc.deliver(traversal("283", 3))
        assert svc.dpus.get("283").delivery.missing == 1  # type: ignore[union-attr]
        assert svc.missing_gauge("283") == 1
        # More sent, more lost: the figure grows, one more warning.
        await svc.deliver(traversal("283", 7), status("283", 9, 1, 9))
        delivery = svc.dpus.get("283").delivery
        assert delivery is not None
        assert (delivery.sent, delivery.stored, delivery.missing) == (9, 6, 3)
        assert len(warnings(caplog)) == 2
        assert svc.missing_gauge("423") is None  # never reported


async def test_events_above_the_reported_seq_wait_for_the_next_report(store: EventStore) -> None:
    async with service(store) as svc:
        # Delivered before the report but sent after it was made: not part of its count.
        await svc.deliver(*(traversal("283", s) for s in range(10, 16)), status("283", 3, 10, 12))
        delivery = svc.dpus.get("283").delivery
        assert delivery is not None
        assert (delivery.first, delivery.seq, delivery.stored, delivery.missing) == (10, 12, 3, 0)
        await svc.deliver(status("283", 6, 10, 15))
        delivery = svc.dpus.get("283").delivery
        assert delivery is not None
        assert (delivery.seq, delivery.stored, delivery.missing) == (15, 6, 0)


async def test_a_new_count_and_a_restart_are_counted_from_the_store(store: EventStore) -> None:
    async with service(store) as svc:
        await svc.deliver(*(traversal("283", s) for s in (1, 2, 4)), status("283", 4, 1, 4))
        assert svc.dpus.get("283").delivery.missing == 1  # type: ignore[union-attr]
        # The DPU rebooted and lost its count: it counts afresh from seq 5.
        await svc.deliver(traversal("283", 5), traversal("283", 7), status("283", 3, 5, 7))
        delivery = svc.dpus.get("283").delivery
        assert delivery is not None
        assert (delivery.first, delivery.sent, delivery.stored, delivery.missing) == (5, 3, 2, 1)
    async with service(store) as restarted:  # the retained status comes again
        await restarted.deliver(status("283", 3, 5, 7))
        assert restarted.dpus.get("283").delivery == Delivery(5, 7, 3, 2, delivery.reported_at)
        assert restarted.missing_gauge("283") == 1


async def test_old_firmware_and_unknown_dpus_report_nothing(store: EventStore) -> None:
    async with service(store) as svc:
        await svc.deliver(
            traversal("283", 1),
            Msg(wire.status_topic("283"), b"online"),
            status("made-up", 5, 1, 5),
            status("423", 0, None, None, online=False),
        )
        assert svc.dpus.get("283").online is True
        assert svc.dpus.get("283").delivery is None
        assert svc.dpus.get("made-up").delivery is None
        assert svc.missing_gauge("made-up") is None
        delivery = svc.dpus.get("423").delivery
        assert delivery is not None
        assert (delivery.sent, delivery.missing) == (0, 0)
        assert svc.dpus.get("423").online is False


# --- through a Mosquitto the test starts -------------------------------------------------------

BURST = 3000  # past the stock queue (1000 + 20 in flight), far below the project's (100,000)
T = TypeVar("T")


async def _publish_burst(url: str, dpu_id: str, count: int) -> None:
    """``count`` traversals as a DPU uploads them, one message each, all acknowledged."""
    address = parse_broker_url(url)
    async with aiomqtt.Client(
        address.host, address.port, identifier=f"dpu-{dpu_id}", max_inflight_messages=200
    ) as dpu:
        dpu.pending_calls_threshold = 400  # 200 publishes in flight on purpose
        topic = wire.traversals_topic(dpu_id)
        for start in range(1, count + 1, 200):
            await asyncio.gather(
                *(
                    dpu.publish(
                        topic, wire.encode(Traversal(dpu_id, s, NOW - 60_000 + s, 1)), qos=1
                    )
                    for s in range(start, min(start + 200, count + 1))
                )
            )


async def _until(check: Callable[[], T | None], act: Callable[[], Awaitable[None]]) -> T:
    """``act`` (a DPU's heartbeat) until ``check`` gives a value: a status may be dropped too."""
    for _ in range(40):
        await act()
        for _ in range(50):
            found = check()
            if found is not None:
                return found
            await asyncio.sleep(0.02)
    raise AssertionError("no delivery report was ever compared")


async def burst_through(
    mosquitto: MosquittoServer, store: EventStore
) -> tuple[int, int, int, float | None]:
    """A paused subscriber, a burst, the subscriber resumed, then the DPU's report: sent,
    stored (in the store), the figure reported, and the gauge."""
    topology = Topology.from_toml(SEED.read_text())
    resume = asyncio.Event()
    system = ActorSystem(History(store, topology), clock=lambda: NOW)
    async with (
        system.running(),
        Subscriber(
            parse_broker_url(mosquitto.url), client_id="service", topics=[wire.SUBSCRIPTION]
        ) as subscriber,
    ):

        async def paused() -> AsyncIterator[Received]:
            async for message in subscriber.messages():
                await resume.wait()  # falls behind: reads nothing, acknowledges nothing
                yield message

        dpus, metrics = DpuRegistry(), Metrics()
        ingest = Ingest(
            paused(), subscriber.ack, store=store, actors=system, dpus=dpus, metrics=metrics,
            clock=lambda: NOW,
        )  # fmt: skip
        task = asyncio.create_task(ingest.run())
        try:
            await _publish_burst(mosquitto.url, "283", BURST)
            resume.set()
            report = wire.encode_status(True, wire.Report(BURST, 1, BURST))
            address = parse_broker_url(mosquitto.url)
            async with aiomqtt.Client(address.host, address.port) as dpu:

                async def heartbeat() -> None:
                    await dpu.publish(wire.status_topic("283"), report, qos=1, retain=True)

                delivery = await _until(lambda: dpus.get("283").delivery, heartbeat)
        finally:
            task.cancel()
            await asyncio.wait([task])
    stored = await store.log.count_seqs("283", 1, BURST)
    gauge = metrics.registry.get_sample_value("headcount_dpu_missing_events", {"dpu_id": "283"})
    assert delivery.stored == stored
    return delivery.sent, stored, delivery.missing, gauge


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[EventStore]:
    async with await EventStore.open(f"sqlite+aiosqlite:///{tmp_path / 'store.db'}") as store:
        yield store


async def test_stock_mosquitto_loss_is_reported_per_dpu(
    tmp_path: Path, sqlite_store: EventStore, caplog: pytest.LogCaptureFixture
) -> None:
    with MosquittoServer(tmp_path / "mosquitto", STOCK_CONF) as mosquitto:
        sent, stored, missing, gauge = await burst_through(mosquitto, sqlite_store)
        mosquitto.stop()
        said = "Outgoing messages are being dropped" in mosquitto.log_text()
    print(f"stock Mosquitto: sent {sent}, stored {stored}, reported missing {missing}")
    assert sent == BURST
    assert stored < BURST, "the stock queue kept the whole burst: make the burst larger"
    assert said, "Mosquitto's log does not say it dropped messages: then who did?"
    assert missing == sent - stored
    assert gauge == missing
    assert any(f"{missing} of them are not stored" in m for m in warnings(caplog))


async def test_project_mosquitto_conf_loses_nothing_and_reports_zero(
    tmp_path: Path, sqlite_store: EventStore, caplog: pytest.LogCaptureFixture
) -> None:
    conf = PROJECT_CONF.read_text(encoding="utf-8")
    with MosquittoServer(tmp_path / "mosquitto", conf) as mosquitto:
        sent, stored, missing, gauge = await burst_through(mosquitto, sqlite_store)
    print(f"project mosquitto.conf: sent {sent}, stored {stored}, reported missing {missing}")
    assert (sent, stored, missing, gauge) == (BURST, BURST, 0, 0)
    assert warnings(caplog) == []


# --- what each broker keeps across its own restart, while the service is away ------------------

AWAY = 200


async def _leave_a_session(url: str) -> None:
    """The service subscribes with its persistent session, then goes away."""
    async with Subscriber(parse_broker_url(url), client_id="service", topics=[wire.SUBSCRIPTION]):
        pass


async def _comes_back(url: str, store: EventStore, sent: int) -> Delivery:
    """The service comes back to ``url``; the DPU repeats its report until it was compared."""
    topology = Topology.from_toml(SEED.read_text())
    system = ActorSystem(History(store, topology), clock=lambda: NOW)
    dpus = DpuRegistry()
    address = parse_broker_url(url)
    async with (
        system.running(),
        Subscriber(address, client_id="service", topics=[wire.SUBSCRIPTION]) as subscriber,
        aiomqtt.Client(address.host, address.port) as dpu,  # DPUs connect anonymously
    ):
        ingest = Ingest(
            subscriber.messages(), subscriber.ack, store=store, actors=system, dpus=dpus,
            metrics=Metrics(), clock=lambda: NOW,
        )  # fmt: skip
        task = asyncio.create_task(ingest.run())
        report = wire.encode_status(True, wire.Report(sent, 1, sent))

        async def heartbeat() -> None:
            await dpu.publish(wire.status_topic("283"), report, qos=1, retain=True)

        try:
            return await _until(lambda: dpus.get("283").delivery, heartbeat)
        finally:
            task.cancel()
            await asyncio.wait([task])


@pytest.mark.parametrize(
    "restart",
    ["amqtt-embedded", "mosquitto-project-sigterm", "mosquitto-project-kill9"],
)
async def test_a_broker_restart_while_the_service_is_away_is_reported(
    restart: str, tmp_path: Path, sqlite_store: EventStore
) -> None:
    """What each broker keeps of the messages it queued for the service when it restarts, and
    that whatever it loses is reported, not silent."""
    if restart == "amqtt-embedded":
        port = free_port()
        async with EmbeddedBroker(port=port, data_dir=tmp_path / "amqtt") as broker:
            await _leave_a_session(broker.url)
            await _publish_burst(broker.url, "283", AWAY)
        async with EmbeddedBroker(port=port, data_dir=tmp_path / "amqtt") as broker:
            delivery = await _comes_back(broker.url, sqlite_store, AWAY)
    else:
        conf = PROJECT_CONF.read_text(encoding="utf-8")
        with MosquittoServer(tmp_path / "mosquitto", conf) as mosquitto:
            await _leave_a_session(mosquitto.url)
            await _publish_burst(mosquitto.url, "283", AWAY)
            await asyncio.to_thread(mosquitto.kill if restart.endswith("kill9") else mosquitto.stop)
            await asyncio.to_thread(mosquitto.start)
            delivery = await _comes_back(mosquitto.url, sqlite_store, AWAY)
    stored = await sqlite_store.log.count_seqs("283", 1, AWAY)
    print(f"{restart}: sent {AWAY}, stored {stored}, reported missing {delivery.missing}")
    assert (delivery.sent, delivery.stored) == (AWAY, stored)
    assert delivery.missing == AWAY - stored
    kept = {"amqtt-embedded": 0, "mosquitto-project-sigterm": AWAY, "mosquitto-project-kill9": 0}
    assert stored == kept[restart]
