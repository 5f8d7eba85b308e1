"""Ingest without a broker: messages in, events stored and routed, acks after commit."""

from __future__ import annotations

import asyncio
from pathlib import Path
from unittest.mock import AsyncMock

import msgpack
import pytest

from headcount.actors import ActorSystem
from headcount.domain.events import Traversal
from headcount.domain.topology import Topology
from headcount.eventstore import quarantine as quarantine_module
from headcount.eventstore.store import EventStore
from headcount.history import History
from headcount.ingest import wire
from headcount.ingest.dpus import DpuRegistry, DpuStatus
from headcount.ingest.pipeline import Ingest, IngestSettings
from headcount.metrics import Metrics
from tests.faults.support_store import SlowCommits
from tests.ingest.faults import StoreFaults
from tests.ingest.inbox import Inbox, Msg
from tests.polling import eventually
from tests.store_readers import quarantined

SEED = Path(__file__).resolve().parents[2] / "examples" / "seed" / "topology.toml"
NOW = 1_700_000_000_000


def traversal(dpu: str, seq: int, ts: int, direction: int = 1) -> Msg:
    return Msg(wire.traversals_topic(dpu), wire.encode(Traversal(dpu, seq, ts, direction)))  # type: ignore[arg-type]


async def run_ingest(
    store: EventStore, messages: list[Msg], settings: IngestSettings | None = None
) -> tuple[list[Msg], Metrics, ActorSystem, DpuRegistry]:
    topology = Topology.from_toml(SEED.read_text())
    metrics, dpus = Metrics(), DpuRegistry()

    async def stored_first(message: Msg) -> None:
        # Acknowledged only once what it carried is in the store.
        if message.topic.endswith("/traversals"):
            assert await store.log.count_traversals() >= 1

    inbox = Inbox(check=stored_first)
    inbox.put(*messages)
    system = ActorSystem(History(store, topology), clock=lambda: NOW)
    async with system.running():
        ingest = Ingest(
            inbox.messages(), inbox.ack, store=store, actors=system, dpus=dpus, metrics=metrics,
            settings=settings or IngestSettings(max_events=3), clock=lambda: NOW,
        )  # fmt: skip
        task = asyncio.create_task(ingest.run())
        await eventually(lambda: len(inbox.acked) == len(messages), what="every message acked")
        await system.drain()
        task.cancel()
        await asyncio.wait([task])
        counts = {s: system.live(s).count for s in ("A", "B")}
    assert counts == {"A": (await History(store, topology).count_at("A", NOW)).count,
                      "B": (await History(store, topology).count_at("B", NOW)).count}  # fmt: skip
    return inbox.acked, metrics, system, dpus


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


async def test_an_event_claiming_another_dpu_is_quarantined_and_counts_nothing(
    store: EventStore,
) -> None:
    spoofed = Traversal("283", 2, NOW - 4000, 1)  # 283 would add 1 to A; 423 would add to A too
    messages = [
        traversal("283", 1, NOW - 5000),
        Msg(
            wire.traversals_topic("423"),
            msgpack.packb([
                {"seq": 5, "ts": NOW - 3000, "direction": -1, "dpu_id": "423"},
                {"seq": spoofed.seq, "ts": spoofed.ts, "direction": 1, "dpu_id": "283"},
            ]),
        ),
    ]  # fmt: skip
    acked, metrics, system, _ = await run_ingest(store, messages)
    assert acked == messages
    assert await store.log.count_traversals() == 2  # 283's seq 1 and 423's seq 5
    assert system.live("A").count == 0  # +1 from 283, -1 from 423; the claimed +1 not counted
    [entry] = await quarantined(store)
    assert entry.reason.startswith("dpu_mismatch: ")
    assert entry.origin == "mqtt:dpus/423/traversals"
    assert counted(metrics, "quarantined", "dpu_mismatch") == 1


# -- no message stops ingest ---------------------------------------------------------------

NOT_UTF8_TOPIC = b"dpus/\xff/traversals".decode("utf-8", "surrogateescape")  # as MQTT gives it
ONE_BATCH = IngestSettings(max_events=100, max_delay_s=0.05)


def hostile() -> list[Msg]:
    """Issue 9's messages, between two good ones, all in one batch."""
    return [
        traversal("283", 1, NOW - 5000),
        Msg("dpus/" + "d" * 10_000 + "/traversals", traversal("283", 9, NOW).payload),
        Msg("dpus/28\x003/traversals", traversal("283", 9, NOW).payload),
        Msg(NOT_UTF8_TOPIC, traversal("283", 9, NOW).payload),
        Msg(wire.traversals_topic("283"), b"\x93" + b"\xab" * 10_000_000),
        traversal("283", 2, NOW - 4000),
    ]


def counted(metrics: Metrics, name: str, label: str) -> float:
    return metrics.registry.get_sample_value(f"headcount_{name}_total", {"reason": label}) or 0.0


async def test_hostile_messages_are_quarantined_and_ingest_goes_on(store: EventStore) -> None:
    messages = hostile()
    acked, metrics, system, _ = await run_ingest(store, messages, ONE_BATCH)
    assert acked == messages
    assert await store.log.count_traversals() == 2
    assert system.live("A").count == 2
    reasons = sorted(e.reason.split(":")[0] for e in await quarantined(store))
    assert reasons == ["bad_topic", "bad_topic", "bad_topic", "oversize"]
    assert counted(metrics, "quarantined", "bad_topic") == 3


async def test_a_message_the_store_refuses_is_isolated_and_ingest_goes_on(
    store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the quarantine's own defence (entries made to fit), the store refuses some of
    those messages (which, depends on the backend): each is found, kept in a minimal form and
    acknowledged; the batch's other messages are stored and counted."""
    monkeypatch.setattr(quarantine_module, "fitting", lambda entry: entry)
    messages = hostile()
    acked, metrics, system, _ = await run_ingest(store, messages, ONE_BATCH)
    assert acked == messages
    assert await store.log.count_traversals() == 2
    assert system.live("A").count == 2
    entries = await quarantined(store)
    refused_by_store = 3 if store.engine.dialect.name == "postgresql" else 1
    reasons = sorted(e.reason.split(":")[0] for e in entries)
    assert reasons.count("unstorable") == refused_by_store
    assert len(entries) == 4  # one for each hostile message, stored in one form or the other
    for entry in entries:
        if entry.reason.startswith("unstorable"):
            assert entry.origin.isascii()
            assert entry.origin.isprintable()
            assert len(entry.origin) <= 300
            assert "the store refused this message" in entry.reason
    assert counted(metrics, "quarantined", "unstorable") == refused_by_store
    assert counted(metrics, "ingest_dropped", "unstorable") == 0


async def test_a_message_the_store_refuses_in_any_form_is_dropped_and_counted(
    store: EventStore, caplog: pytest.LogCaptureFixture
) -> None:
    faults = StoreFaults(store.engine)
    faults.refuse(lambda statement, parameters: "poison" in repr(parameters))
    messages = [
        traversal("283", 1, NOW - 5000),
        Msg("dpus/poison/traversals/x", b"anything"),
        traversal("283", 2, NOW - 4000),
    ]
    try:
        acked, metrics, system, _ = await run_ingest(store, messages, ONE_BATCH)
    finally:
        faults.remove()
    assert acked == messages
    assert await store.log.count_traversals() == 2
    assert system.live("A").count == 2
    assert await quarantined(store) == []
    assert counted(metrics, "ingest_dropped", "unstorable") == 1
    assert "refuses even a minimal quarantine entry" in caplog.text
    assert "dpus/poison/traversals/x" in caplog.text


async def test_events_before_a_closed_log_cost_only_themselves(
    store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A message holding events older than a log closed by ``partitions detach`` (which the
    store refuses, as PostgreSQL's trigger does; injected here on both backends): its other
    events are stored and counted, each refused one is quarantined with the event as its
    payload, and that takes a few refused statements, not one per event (nothing after the
    message waits for a commit per event)."""
    faults = closed_log(store, monkeypatch, closed_before=NOW - 3_500)
    early = [Traversal("283", 100 + i, NOW - 9_000 + i, 1) for i in range(40)]
    mixed = Msg(
        wire.traversals_topic("283"),
        wire.encode(
            [Traversal("283", 2, NOW - 3_000, 1), *early, Traversal("283", 4, NOW - 2000, 1)]
        ),
    )
    messages = [traversal("283", 1, NOW - 3_400), mixed, traversal("423", 7, NOW - 1000, -1)]
    try:
        acked, metrics, system, _ = await run_ingest(store, messages, ONE_BATCH)
    finally:
        faults.remove()
    assert acked == messages
    assert await store.log.count_traversals() == 4  # all but the early ones
    assert system.live("A").count == 2  # +1 +1 +1 from 283, -1 from 423
    entries = await quarantined(store)
    assert sorted(e.payload for e in entries) == sorted(wire.encode(t) for t in early)
    assert all(
        e.reason.startswith(f"unstorable: DPU '283' seq {t.seq}: ts ")
        and "where the log was closed ('headcount partitions detach')" in e.reason
        for e, t in zip(
            sorted(entries, key=lambda e: e.payload), sorted(early, key=wire.encode), strict=True
        )
    )
    assert counted(metrics, "quarantined", "unstorable") == len(early)
    assert counted(metrics, "ingest_dropped", "unstorable") == 0
    assert 1 <= len([f for f in faults.failed if f.startswith("refused")]) <= 4


async def test_once_a_closed_log_refused_an_event_older_ones_are_refused_without_the_store(
    store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    faults = closed_log(store, monkeypatch, closed_before=NOW - 3_500)
    # One message a batch, each read while the one before commits: the fourth is read once
    # the second's refusal has been dealt with.
    messages = [
        traversal("283", 1, NOW - 3_200),
        traversal("283", 2, NOW - 9_000),
        traversal("283", 3, NOW - 3_000),
        traversal("283", 4, NOW - 8_000),
        traversal("283", 5, NOW - 2_000),
    ]
    try:
        acked, metrics, system, _ = await run_ingest(
            store, messages, IngestSettings(max_events=1, max_delay_s=0.05)
        )
    finally:
        faults.remove()
    assert acked == messages
    assert await store.log.count_traversals() == 3
    assert system.live("A").count == 3
    assert counted(metrics, "quarantined", "unstorable") == 2
    assert len([f for f in faults.failed if f.startswith("refused")]) == 1


def closed_log(
    store: EventStore, monkeypatch: pytest.MonkeyPatch, *, closed_before: int
) -> StoreFaults:
    """The store as after ``partitions detach`` at ``closed_before``: the log says where it was
    closed, and inserting an event before it is refused (as PostgreSQL's trigger does),
    injected on both backends. ``remove()`` the faults when done."""
    monkeypatch.setattr(store.log, "closed_before", AsyncMock(return_value=closed_before))
    faults = StoreFaults(store.engine)
    faults.refuse(
        lambda statement, parameters: (
            "INSERT INTO traversals" in statement
            and any(
                isinstance(v, int) and NOW - 10_000 < v < closed_before for v in _flat(parameters)
            )
        )
    )
    return faults


def _flat(parameters: object) -> list[object]:
    """A statement's parameters as one list (the append binds rows as one flat tuple on
    SQLite and one array per column on PostgreSQL)."""
    if isinstance(parameters, list | tuple):
        return [value for item in parameters for value in _flat(item)]
    return [parameters]


async def test_a_store_that_is_down_holds_the_batch_and_health_says_so(
    store: EventStore,
) -> None:
    topology = Topology.from_toml(SEED.read_text())
    inbox = Inbox()
    acked = inbox.acked
    faults = StoreFaults(store.engine)
    system = ActorSystem(History(store, topology), clock=lambda: NOW)
    try:
        async with system.running():
            ingest = Ingest(
                inbox.messages(), inbox.ack, store=store, actors=system, dpus=DpuRegistry(),
                metrics=Metrics(), settings=IngestSettings(stall_after_s=0.3), clock=lambda: NOW,
            )  # fmt: skip
            health = ingest.health
            task = asyncio.create_task(ingest.run())
            assert (health.waiting, health.problem(), health.last_commit) == (0, None, None)

            first = traversal("283", 1, NOW - 5000)
            inbox.put(first)
            await eventually(lambda: first in acked, what="the first message acknowledged")
            assert health.last_commit == NOW
            assert (health.waiting, health.stalled_since, health.problem()) == (0, None, None)

            faults.down = True
            held = [traversal("283", 2, NOW - 4000), Msg(wire.status_topic("283"), b"online")]
            inbox.put(*held)
            await eventually(lambda: health.problem() is not None, what="a stall reported")
            problem = health.problem()
            assert problem is not None
            assert problem.startswith("ingest is stalled: 2 message(s) have waited")
            assert "injected: connection lost" in problem
            assert health.waiting == 2
            assert health.stalled_since == NOW
            assert health.last_error is not None
            assert acked == [first]  # nothing acknowledged while it is not stored

            faults.down = False
            await eventually(lambda: len(acked) == 3, what="the held batch acknowledged")
            assert acked == [first, *held]
            assert health.waiting == 0
            assert health.stalled_since is None
            assert health.problem() is None
            assert health.last_error is None
            await system.drain()
            assert system.live("A").count == 2
            task.cancel()
            await asyncio.wait([task])
    finally:
        faults.remove()


# -- everything received is accounted for --------------------------------------------------


async def test_topics_of_any_other_shape_are_quarantined(store: EventStore) -> None:
    messages = [
        traversal("283", 1, NOW - 5000),
        Msg("dpus/283/traversals/extra", traversal("283", 2, NOW).payload),
        Msg("dpus/283", b"x"),
        Msg("dpus", b"x"),
        Msg("dpus/283/status/", b"online"),
    ]
    acked, metrics, _, dpus = await run_ingest(store, messages, ONE_BATCH)
    assert acked == messages
    assert await store.log.count_traversals() == 1
    entries = await quarantined(store)
    assert sorted(e.origin for e in entries) == sorted(f"mqtt:{m.topic}" for m in messages[1:])
    assert all(e.reason.startswith("bad_topic: ") for e in entries)
    assert counted(metrics, "quarantined", "bad_topic") == 4
    assert dpus.get("283").online is None


async def test_status_from_unknown_dpus_is_counted_not_shown(store: EventStore) -> None:
    messages = [
        traversal("283", 1, NOW - 5000),
        Msg(wire.status_topic("283"), b"online"),
        Msg(wire.status_topic("made-up"), b"online"),
        Msg(wire.status_topic("made-up-too"), b"offline"),
        Msg(wire.status_topic("made-up"), b"maybe"),
        Msg(wire.status_topic("423"), b"\xff\xfe"),
        traversal("made-up", 1, NOW - 5000),  # refused (unknown_dpu), and not recorded
    ]
    acked, metrics, _, dpus = await run_ingest(store, messages, ONE_BATCH)
    assert acked == messages
    assert dpus.get("283").online is True
    assert dpus.online_count() == 1
    for made_up in ("made-up", "made-up-too"):
        assert dpus.get(made_up) == DpuStatus(made_up)  # nothing recorded
    status = metrics.registry.get_sample_value
    assert status("headcount_status_messages_total", {"outcome": "applied"}) == 1
    assert status("headcount_status_messages_total", {"outcome": "unknown_dpu"}) == 2
    reasons = sorted(e.reason.split(":")[0] for e in await quarantined(store))
    assert reasons == ["bad_status", "bad_status", "unknown_dpu"]


async def test_the_next_batch_is_read_while_one_commits_and_acks_follow_commits(
    store: EventStore,
) -> None:
    """A batch is decoded while the one before it commits; every message is still
    acknowledged in receipt order and only once its traversal is durable."""
    topology = Topology.from_toml(SEED.read_text())
    messages = [traversal("283", seq, NOW - 10_000 + seq) for seq in range(1, 7)]
    early: list[int] = []

    async def durable_first(message: Msg) -> None:
        seq = messages.index(message) + 1
        if await store.log.count_seqs("283", seq, seq) != 1:
            early.append(seq)

    inbox = Inbox(check=durable_first)
    dpus = DpuRegistry()
    slow = SlowCommits(store.engine, latency_s=0.3)
    system = ActorSystem(History(store, topology), clock=lambda: NOW)
    try:
        async with system.running():
            recovered = slow.commits  # (PostgreSQL reads the log's head in a locked write)
            ingest = Ingest(
                inbox.messages(), inbox.ack, store=store, actors=system, dpus=dpus,
                metrics=Metrics(), settings=IngestSettings(max_events=3), clock=lambda: NOW,
            )  # fmt: skip
            task = asyncio.create_task(ingest.run())
            inbox.put(*messages)
            # The second batch (seq 4 to 6) is read while the first is still committing.
            await eventually(lambda: dpus.get("283").last_seq == 6, what="all six decoded")
            assert inbox.acked == []
            assert slow.commits - recovered <= 1
            await eventually(lambda: len(inbox.acked) == 6, what="every message acked")
            task.cancel()
            await asyncio.wait([task])
    finally:
        slow.remove()
    assert inbox.acked == messages
    assert early == []
    assert system.live("A").count == 6


async def test_a_batch_is_appended_while_the_one_before_it_is_routed(
    store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store works while the event loop routes and acknowledges: with the first batch's
    routing held, the second batch is appended all the same, but neither is acknowledged,
    nor the second routed, before the first is through (order kept)."""
    topology = Topology.from_toml(SEED.read_text())
    messages = [traversal("283", seq, NOW - 10_000 + seq) for seq in range(1, 7)]
    inbox = Inbox()
    system = ActorSystem(History(store, topology), clock=lambda: NOW)
    release = asyncio.Event()
    routed: list[list[int]] = []
    route = system.route

    async def held_route(traversals: list[Traversal]) -> int:
        if not routed:
            await release.wait()  # the first batch's routing, until released
        routed.append([t.seq for t in traversals])
        return await route(traversals)

    monkeypatch.setattr(system, "route", held_route)
    async with system.running():
        ingest = Ingest(
            inbox.messages(), inbox.ack, store=store, actors=system, dpus=DpuRegistry(),
            metrics=Metrics(), settings=IngestSettings(max_events=3), clock=lambda: NOW,
        )  # fmt: skip
        task = asyncio.create_task(ingest.run())
        inbox.put(*messages)
        async with asyncio.timeout(10):  # both batches appended
            while await store.log.count_traversals() < 6:
                await asyncio.sleep(0.005)
        assert inbox.acked == []
        assert routed == []
        release.set()
        await eventually(lambda: len(inbox.acked) == 6, what="every message acked")
        task.cancel()
        await asyncio.wait([task])
    assert routed == [[1, 2, 3], [4, 5, 6]]
    assert inbox.acked == messages
    assert system.live("A").count == 6


@pytest.mark.parametrize("route_duplicates", [True, False], ids=["sharded", "alone"])
async def test_a_shard_folds_what_another_shard_stored_first_exactly_once(
    store: EventStore, route_duplicates: bool
) -> None:
    topology = Topology.from_toml(SEED.read_text())
    system = ActorSystem(History(store, topology), clock=lambda: NOW)
    inbox = Inbox()
    messages = [
        traversal("423", 1, NOW - 9000, -1),
        traversal("423", 2, NOW - 8000),
        traversal("423", 2, NOW - 8000),  # and one redelivered
        traversal("423", 4, NOW - 6000),
        traversal("423", 1, NOW - 9000, 1),  # a conflict: quarantined, never folded
    ]
    async with system.running():
        # Another shard shares DPU 423 (doorway Z joins A and B) and stores some of its
        # traversals first, after this shard recovered: its ingest finds them stored.
        other = [Traversal("423", 1, NOW - 9000, -1), Traversal("423", 2, NOW - 8000, 1)]
        await store.log.append([*other, Traversal("423", 3, NOW - 7000, 1)])
        settings = IngestSettings(max_events=3, route_duplicates=route_duplicates)
        ingest = Ingest(
            inbox.messages(), inbox.ack, store=store, actors=system, dpus=DpuRegistry(),
            metrics=Metrics(), settings=settings, clock=lambda: NOW,
        )  # fmt: skip
        task = asyncio.create_task(ingest.run())
        inbox.put(*messages)
        await eventually(lambda: len(inbox.acked) == len(messages), what="every message acked")
        await system.drain()
        task.cancel()
        await asyncio.wait([task])
        live = system.live("A")
    assert await store.log.count_traversals() == 4
    # -1 (floored at 0), +1, +1: seq 3 was stored by the other shard and never sent here.
    if route_duplicates:  # each traversal this shard received is folded, once
        assert (live.count, live.entrances, live.exits) == (2, 2, 1)
    else:  # alone, a duplicate was folded when stored: only seq 4 is routed
        assert (live.count, live.entrances, live.exits) == (1, 1, 0)
