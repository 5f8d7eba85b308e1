"""Ingest without a broker: messages in, events stored and routed, acks after commit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import msgpack

from headcount.actors import ActorSystem
from headcount.domain.events import Traversal
from headcount.domain.topology import Topology
from headcount.eventstore.store import EventStore
from headcount.history import History
from headcount.ingest import wire
from headcount.ingest.dpus import DpuRegistry
from headcount.ingest.pipeline import Ingest, IngestSettings
from headcount.metrics import Metrics
from tests.store_readers import quarantined

SEED = Path(__file__).resolve().parents[2] / "examples" / "seed" / "topology.toml"
NOW = 1_700_000_000_000


@dataclass(frozen=True)
class Msg:
    topic: str
    payload: bytes


def traversal(dpu: str, seq: int, ts: int, direction: int = 1) -> Msg:
    return Msg(wire.traversals_topic(dpu), wire.encode(Traversal(dpu, seq, ts, direction)))  # type: ignore[arg-type]


async def run_ingest(
    store: EventStore, messages: list[Msg]
) -> tuple[list[Msg], Metrics, ActorSystem, DpuRegistry]:
    topology = Topology.from_toml(SEED.read_text())
    acked: list[Msg] = []
    metrics, dpus = Metrics(), DpuRegistry()
    done = asyncio.Event()

    async def source() -> AsyncIterator[Msg]:
        for m in messages:
            yield m
        await asyncio.Event().wait()  # a broker connection stays open

    async def ack(message: Msg) -> None:
        # Acknowledged only once what it carried is in the store.
        if message.topic.endswith("/traversals"):
            assert await store.log.count_traversals() >= 1
        acked.append(message)
        if len(acked) == len(messages):
            done.set()

    system = ActorSystem(History(store, topology), clock=lambda: NOW)
    async with system.running():
        ingest = Ingest(
            source(), ack, store=store, actors=system, dpus=dpus, metrics=metrics,
            settings=IngestSettings(max_events=3), clock=lambda: NOW,
        )  # fmt: skip
        task = asyncio.create_task(ingest.run())
        async with asyncio.timeout(10):
            await done.wait()
        await system.drain()
        task.cancel()
        await asyncio.wait([task])
        counts = {s: system.live(s).count for s in ("A", "B")}
    assert counts == {"A": (await History(store, topology).count_at("A", NOW)).count,
                      "B": (await History(store, topology).count_at("B", NOW)).count}  # fmt: skip
    return acked, metrics, system, dpus


async def test_messages_are_stored_routed_and_acked_in_order(store: EventStore) -> None:
    messages = [
        traversal("283", 1, NOW - 5000),
        traversal("283", 1, NOW - 5000),  # redelivery
        traversal("423", 7, NOW - 4000, -1),
        Msg(
            wire.traversals_topic("423"),
            wire.encode([Traversal("423", 8, NOW - 3000, 1), Traversal("423", 9, NOW - 2000, 1)]),
        ),
        Msg(wire.status_topic("423"), b"online"),
    ]  # fmt: skip
    acked, metrics, system, dpus = await run_ingest(store, messages)
    assert acked == messages
    assert await store.log.count_traversals() == 4
    assert system.live("A").count == 2  # +1, -1, +1, +1
    assert system.live("B").count == 0  # 423 hangs outside B: +1, then -1, -1 floored at 0
    rendered = metrics.render().decode()
    assert "headcount_events_ingested_total 4.0" in rendered
    assert "headcount_duplicates_dropped_total 1.0" in rendered
    status = dpus.get("423")
    assert (status.online, status.last_seq, status.last_seen) == (True, 9, NOW)


async def test_bad_input_is_quarantined_acked_and_changes_nothing(store: EventStore) -> None:
    messages = [
        traversal("283", 1, NOW - 5000),
        Msg(wire.traversals_topic("283"), b"\xc1"),
        Msg(wire.traversals_topic("283"), msgpack.packb({"seq": 2, "ts": NOW, "direction": 0})),
        traversal("999", 1, NOW - 5000),  # no such DPU in the topology
        traversal("283", 3, NOW + 3_600_000),  # an hour in the future
        Msg("dpus/283/elsewhere", b"x"),
        Msg(wire.status_topic("283"), b"maybe"),
    ]
    acked, metrics, system, _ = await run_ingest(store, messages)
    assert acked == messages
    assert await store.log.count_traversals() == 1
    assert system.live("A").count == 1
    reasons = sorted(e.reason.split(":")[0] for e in await quarantined(store))
    assert reasons == sorted(
        ["not_msgpack", "bad_direction", "unknown_dpu", "future_ts", "bad_topic", "bad_status"]
    )
    rendered = metrics.render().decode()
    for reason in reasons:
        assert f'headcount_quarantined_total{{reason="{reason}"}} 1.0' in rendered
