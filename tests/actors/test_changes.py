"""The change feed: subscriptions on their own, then the causes the actors publish."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from headcount.actors import ActorSystem
from headcount.actors.changes import Cause, Change, ChangeFeed, Subscription, SubscriptionClosed
from headcount.domain.events import Reset, Traversal
from headcount.domain.timefmt import parse_iso
from headcount.domain.topology import Topology
from headcount.eventstore.store import EventStore
from headcount.history import History
from tests.actors.test_system import crash_once
from tests.polling import eventually

SEED_TOPOLOGY = Path(__file__).resolve().parents[2] / "examples" / "seed" / "topology.toml"
NOW = 1_700_000_000_000
MINUTE = 60_000

DAILY = """
[[spaces]]
id = "Hall"
name = "Hall"
time_zone = "Europe/Berlin"
daily_reset = "04:00"

[[spaces]]
id = "Shop"
name = "Shop"

[[doorways]]
id = "D"
name = "Door"
links = [{ space = "Hall", sensor_placement = 1 }, { space = "Shop", sensor_placement = 1 }]

[[assignments]]
dpu = "7"
doorway = "D"
valid_from = "2018-01-01T00:00:00Z"
"""


def change(space_id: str, n: int, cause: Cause = Cause.TRAVERSAL) -> Change:
    return Change(space_id, NOW + n, n, n, 0, cause)


def drained(subscription: Subscription) -> list[Change]:
    out = []
    while (c := subscription.get_nowait()) is not None:
        out.append(c)
    return out


# -- the feed on its own -------------------------------------------------------------------


async def test_subscribers_get_their_spaces_in_order() -> None:
    feed = ChangeFeed()
    a, everything = feed.subscribe(["A"]), feed.subscribe()
    for c in (change("A", 1), change("B", 2), change("A", 3)):
        feed.publish(c)
    assert [c.count for c in drained(a)] == [1, 3]
    assert [c.count for c in drained(everything)] == [1, 2, 3]


async def test_a_full_subscriber_is_closed_and_the_others_go_on() -> None:
    feed = ChangeFeed()
    slow, fine = feed.subscribe(["A"], maxsize=2), feed.subscribe(["A"], maxsize=100)
    for n in range(10):
        feed.publish(change("A", n))  # never blocks, never raises
    assert slow.overflowed
    assert slow.closed
    with pytest.raises(SubscriptionClosed, match="more than 2 changes behind"):
        await slow.get()
    assert [c.count for c in drained(fine)] == list(range(10))
    assert feed.overflows == 1
    assert not feed.wants("B")
    assert feed.subscribers == 1
    with pytest.raises(SubscriptionClosed):
        async for _ in slow:
            pass


async def test_close_wakes_a_waiting_consumer_and_ends_iteration() -> None:
    feed = ChangeFeed()
    subscription = feed.subscribe(["A"])
    received: list[Change] = []

    async def consume() -> None:
        async for c in subscription:
            received.append(c)

    task = asyncio.create_task(consume())
    feed.publish(change("A", 1))
    await eventually(lambda: len(received) == 1)
    subscription.close()
    await task  # ends quietly: the consumer closed it
    assert not feed.wants("A")
    assert not subscription.overflowed
    feed.publish(change("A", 2))  # nobody listens: nothing to do


def test_maxsize_must_be_positive() -> None:
    with pytest.raises(ValueError, match="maxsize"):
        ChangeFeed().subscribe(maxsize=0)


# -- what the actors publish ---------------------------------------------------------------


@pytest.fixture
def seed() -> Topology:
    return Topology.from_toml(SEED_TOPOLOGY.read_text(), source=str(SEED_TOPOLOGY))


async def routed(system: ActorSystem, store: EventStore, events: list[Traversal]) -> None:
    await system.route(list((await store.log.append(events)).new))
    await system.drain()


async def test_causes_traversal_reset_and_corrections(store: EventStore, seed: Topology) -> None:
    history = History(store, seed)
    system = ActorSystem(history, window_ms=5 * MINUTE, clock=lambda: NOW)
    async with system.running():
        a = system.changes.subscribe(["A"])
        await routed(system, store, [Traversal("283", 1, NOW - 60_000, 1)])
        await routed(system, store, [Traversal("283", 2, NOW - 50_000, 1)])
        await system.reset(Reset("A", NOW - 40_000, 7))
        # Late within the window: refolded in memory.
        await routed(system, store, [Traversal("283", 3, NOW - 45_000, 1)])
        # Too late for the window: reloaded from the store.
        await routed(system, store, [Traversal("283", 4, NOW - 30 * MINUTE, 1)])
        got = drained(a)
        assert [c.cause for c in got] == [
            Cause.TRAVERSAL,
            Cause.TRAVERSAL,
            Cause.RESET,
            Cause.CORRECTION,
            Cause.CORRECTION,
        ]
        # Dated by the newest event the state holds: a late one changes the past, not that.
        assert [c.ts for c in got] == [NOW - 60_000, NOW - 50_000] + [NOW - 40_000] * 3
        assert [(c.count, c.entrances) for c in got] == [(1, 1), (2, 2), (7, 2), (7, 3), (7, 4)]
        live = system.live("A")
        assert (got[-1].count, got[-1].entrances, got[-1].exits) == (
            live.count,
            live.entrances,
            live.exits,
        )
        assert all(c.space_id == "A" for c in got)


async def test_nothing_is_built_without_subscribers(store: EventStore, seed: Topology) -> None:
    system = ActorSystem(History(store, seed), clock=lambda: NOW)
    async with system.running():
        b = system.changes.subscribe(["B"])
        await routed(system, store, [Traversal("283", 1, NOW - 1000, 1)])  # A only
        await routed(system, store, [Traversal("423", 1, NOW - 900, 1)])  # A and B
        assert system.changes.published == 1
        assert [(c.space_id, c.count) for c in drained(b)] == [("B", 0)]  # floored, one exit


async def test_events_that_arrive_together_make_one_change(
    store: EventStore, seed: Topology
) -> None:
    system = ActorSystem(History(store, seed), clock=lambda: NOW)
    async with system.running():
        a = system.changes.subscribe(["A"])
        await routed(system, store, [Traversal("283", i, NOW - 1000 + i, 1) for i in range(20)])
        assert drained(a) == [Change("A", NOW - 981, 20, 20, 0, Cause.TRAVERSAL)]


async def test_overflow_closes_the_subscriber_and_counting_goes_on(
    store: EventStore, seed: Topology
) -> None:
    system = ActorSystem(History(store, seed), clock=lambda: NOW)
    async with system.running():
        slow = system.changes.subscribe(["A"], maxsize=3)
        for i in range(5):  # five changes, none read
            await routed(system, store, [Traversal("283", i, NOW - 1000 + i, 1)])
        assert slow.overflowed
        assert system.live("A").count == 5
        assert not system.changes.wants("A")


async def test_daily_reset_is_published_with_no_event(store: EventStore) -> None:
    topology = Topology.from_toml(DAILY, source="daily")
    before = parse_iso("2026-03-28T02:59:00Z")  # 03:59 in Berlin
    now = [before]
    system = ActorSystem(History(store, topology), clock=lambda: now[0], daily_reset_tick_s=0.01)
    async with system.running():
        await routed(system, store, [Traversal("7", 1, before - 1000, 1)])
        subscription = system.changes.subscribe()
        now[0] = parse_iso("2026-03-28T03:00:30Z")  # 04:00:30: the reset passed
        got = await asyncio.wait_for(subscription.get(), 30)
        assert got == Change("Hall", parse_iso("2026-03-28T03:00:00Z"), 0, 1, 0, Cause.DAILY_RESET)
        assert system.live("Hall").count == 0
        assert system.live("Shop").count == 1
        # The next one comes from the DST-aware rule: the clocks go forward that night.
        now[0] = parse_iso("2026-03-29T02:00:01Z")  # 04:00:01 CEST
        got = await asyncio.wait_for(subscription.get(), 30)
        assert got.ts == parse_iso("2026-03-29T02:00:00Z")
        assert got.cause is Cause.DAILY_RESET
        assert subscription.qsize() == 0


async def test_a_restarted_actor_publishes_the_state_it_recovered(
    store: EventStore, seed: Topology, monkeypatch: pytest.MonkeyPatch
) -> None:
    system = ActorSystem(History(store, seed), clock=lambda: NOW)
    actor = system.actor("A")
    monkeypatch.setattr(actor, "_apply", crash_once(actor))
    async with system.running():
        a = system.changes.subscribe(["A"])
        await routed(system, store, [Traversal("283", 1, NOW - 1000, 1)])  # crashes the actor
        await eventually(lambda: system.restarts == 1 and actor.ready, what="the restart")
        assert drained(a) == [Change("A", NOW - 1000, 1, 1, 0, Cause.CORRECTION)]
