"""The actor system against a real store: recovery, routing, late events, supervision."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from headcount.actors import ActorSystem, RestartBudget, SupervisorError
from headcount.actors import system as system_module
from headcount.actors.live import Outcomes
from headcount.actors.space import SpaceActor
from headcount.domain.events import Reset, SpaceEvent, Traversal
from headcount.domain.topology import Topology
from headcount.errors import StoreError
from headcount.eventstore.store import EventStore
from headcount.history import History
from tests.polling import eventually

SEED_TOPOLOGY = Path(__file__).resolve().parents[2] / "examples" / "seed" / "topology.toml"
NOW = 1_700_000_000_000
MINUTE = 60_000


@pytest.fixture
def seed() -> Topology:
    return Topology.from_toml(SEED_TOPOLOGY.read_text(), source=str(SEED_TOPOLOGY))


def clock() -> int:
    return NOW


async def stored(store: EventStore, events: list[Traversal]) -> list[Traversal]:
    """Append like ingest does and return what is new, for routing."""
    return list((await store.log.append(events)).new)


async def expect_live_equals_history(system: ActorSystem, history: History) -> None:
    await system.drain()
    for space_id in system.actors:
        assert system.live(space_id).count == (await history.count_at(space_id, NOW)).count


async def test_recovery_then_live_events_in_any_order(store: EventStore, seed: Topology) -> None:
    history = History(store, seed, snapshot_every=3, snapshot_lag_ms=0)
    # Before start: a morning of traffic, some of it old enough to be settled at recovery.
    await store.log.append(
        [Traversal("283", i, NOW - (60 - i) * MINUTE, 1 if i % 3 else -1) for i in range(40)]
    )
    await history.refresh_snapshots(now=NOW)
    system = ActorSystem(history, window_ms=5 * MINUTE, clock=clock)
    async with system.running():
        await expect_live_equals_history(system, history)
        # In order, out of order within the window, and too late for the window.
        for batch in (
            [Traversal("423", 1, NOW - 1 * MINUTE, 1), Traversal("423", 2, NOW - 30_000, 1)],
            [Traversal("423", 0, NOW - 2 * MINUTE, -1)],
            [
                Traversal("283", 100, NOW - 45 * MINUTE, -1),
                Traversal("283", 101, NOW - 44 * MINUTE, -1),
            ],
        ):
            await system.route(await stored(store, batch))
            await expect_live_equals_history(system, history)
        assert system.actor("A").late_events >= 2
        assert system.actor("A").reloads >= 1


async def test_duplicates_delivered_twice_count_once(store: EventStore, seed: Topology) -> None:
    history = History(store, seed)
    system = ActorSystem(history, clock=clock)
    async with system.running():
        events = await stored(store, [Traversal("283", 1, NOW - 1000, 1)])
        await system.route(events)
        await system.route(events)  # e.g. a redelivery racing a restart
        await system.drain()
        assert system.live("A").count == 1
        assert system.live("A").entrances == 1


async def test_resets_reach_their_space(store: EventStore, seed: Topology) -> None:
    history = History(store, seed)
    system = ActorSystem(history, clock=clock)
    async with system.running():
        await system.route(await stored(store, [Traversal("283", 1, NOW - 2000, 1)]))
        reset = Reset("A", NOW - 1000, 7)
        await store.log.append_reset(reset)
        await system.route_reset(reset)
        await expect_live_equals_history(system, history)
        assert system.live("A").count == 7


async def test_a_reset_made_through_the_system_is_live_when_it_returns(
    store: EventStore, seed: Topology, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No drain between the reset and the look: ``reset`` returns once the live count shows
    it, whether it lands in the actor's window, is too late for it (a reload from the store),
    or the actor crashes on it (recovered from the store, which holds it)."""
    history = History(store, seed, snapshot_every=2, snapshot_lag_ms=0)
    system = ActorSystem(history, window_ms=5 * MINUTE, clock=clock)
    async with system.running():
        await system.route(
            await stored(store, [Traversal("283", i, NOW - (40 - i) * MINUTE, 1) for i in range(8)])
        )
        await system.drain()
        assert system.live("A").count == 8
        await system.reset(Reset("A", NOW - MINUTE, 3))
        assert system.live("A").count == 3
        await system.reset(Reset("A", NOW - 50 * MINUTE, 0))  # too late for the window
        assert system.live("A").count == 3
        await system.reset(Reset("A", NOW - 20 * MINUTE, 1))  # late, after 8 entrances
        assert system.live("A").count == 3
        actor = system.actor("A")
        monkeypatch.setattr(actor, "_apply", crash_once(actor))
        await system.reset(Reset("A", NOW - 1000, 11))
        assert system.live("A").count == 11
        assert system.restarts == 1
        await expect_live_equals_history(system, history)


async def test_unknown_space_is_refused(store: EventStore, seed: Topology) -> None:
    with pytest.raises(LookupError, match="nowhere"):
        ActorSystem(History(store, seed), space_ids=["nowhere"])


def crash_once(actor: SpaceActor) -> Callable[[object, Iterable[SpaceEvent]], Outcomes]:
    """The actor's ``_apply``, crashing on the first events it is given and normal after."""
    original = actor._apply
    crashes = 1

    def apply(live: object, events: Iterable[SpaceEvent]) -> Outcomes:
        nonlocal crashes
        if crashes:
            crashes -= 1
            raise RuntimeError("boom")
        return original(live, events)  # type: ignore[arg-type]

    return apply


async def test_crashed_actor_restarts_from_the_store(
    store: EventStore, seed: Topology, monkeypatch: pytest.MonkeyPatch
) -> None:
    history = History(store, seed)
    system = ActorSystem(history, clock=clock)
    actor = system.actor("A")
    monkeypatch.setattr(actor, "_apply", crash_once(actor))
    async with system.running():
        await system.route(await stored(store, [Traversal("283", 1, NOW - 1000, 1)]))
        await system.drain()
        # The event that crashed the actor was stored: the restart folds it from the log.
        await eventually(lambda: system.restarts == 1 and actor.ready, what="the restart")
        assert system.restarts == 1
        assert system.live("A").count == 1


async def test_restart_budget_exhausted_stops_the_system(
    store: EventStore, seed: Topology, monkeypatch: pytest.MonkeyPatch
) -> None:
    history = History(store, seed)
    system = ActorSystem(history, clock=clock, budget=lambda: RestartBudget(1, 60))
    actor = system.actor("A")

    def always(live: object, event: SpaceEvent) -> bool:
        raise RuntimeError("boom")

    monkeypatch.setattr(actor, "_apply", always)
    with pytest.raises(SupervisorError, match="failed more than 1 times"):  # noqa: PT012
        async with system.running():
            for seq in range(3):
                await system.route(await stored(store, [Traversal("283", seq, NOW - 1000, 1)]))
            task = system.task
            assert task is not None
            await eventually(task.done, what="the system stopping")


async def test_a_store_error_while_restarting_spends_the_budget_and_retries(
    store: EventStore, seed: Topology, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store failing during a restart is one more failure within the budget: the
    supervisor retries the recovery, it does not stop the whole system."""
    history = History(store, seed)
    system = ActorSystem(history, clock=clock, budget=lambda: RestartBudget(3, 60))
    actor = system.actor("A")
    original_recover = actor.recover
    recover_failures = 1

    async def recover_fails_once() -> None:
        nonlocal recover_failures
        if recover_failures:
            recover_failures -= 1
            raise StoreError("the event store failed: connection refused")
        await original_recover()

    async with system.running():
        monkeypatch.setattr(actor, "_apply", crash_once(actor))
        monkeypatch.setattr(actor, "recover", recover_fails_once)
        await system.route(await stored(store, [Traversal("283", 1, NOW - 1000, 1)]))
        await eventually(lambda: system.restarts == 1 and actor.ready, what="the restart")
        assert recover_failures == 0
        assert system.live("A").count == 1
        task = system.task
        assert task is not None
        assert not task.done()


async def test_a_restart_that_keeps_failing_stops_the_system_within_the_budget(
    store: EventStore, seed: Topology, monkeypatch: pytest.MonkeyPatch
) -> None:
    history = History(store, seed)
    system = ActorSystem(history, clock=clock, budget=lambda: RestartBudget(2, 60))
    actor = system.actor("A")

    def always(live: object, event: SpaceEvent) -> bool:
        raise RuntimeError("boom")

    async def store_down() -> None:
        raise StoreError("the event store failed: connection refused")

    with pytest.raises(SupervisorError, match="failed more than 2 times"):  # noqa: PT012
        async with system.running():
            monkeypatch.setattr(actor, "_apply", always)
            monkeypatch.setattr(actor, "recover", store_down)
            await system.route(await stored(store, [Traversal("283", 1, NOW - 1000, 1)]))
            task = system.task
            assert task is not None
            await eventually(task.done, what="the system stopping")


def test_restart_budget_window() -> None:
    budget = RestartBudget(2, over_s=60)
    assert budget.spend()
    assert budget.spend()
    assert not budget.spend()


async def test_old_events_into_an_empty_store_are_placed_in_memory(
    store: EventStore, seed: Topology
) -> None:
    """Nothing stored yet: an hour-old event is not 'too late' for anything."""
    history = History(store, seed)
    system = ActorSystem(history, clock=clock)
    async with system.running():
        await system.route(await stored(store, [Traversal("283", 1, NOW - 3_600_000, 1)]))
        await expect_live_equals_history(system, history)
        assert system.actor("A").reloads == 0


async def test_a_backlog_too_late_for_memory_costs_one_reload(
    store: EventStore, seed: Topology
) -> None:
    history = History(store, seed)
    await store.log.append([Traversal("283", 1000, NOW - 1000, 1)])
    system = ActorSystem(history, window_ms=5 * MINUTE, clock=clock)
    async with system.running():
        # A DPU back from an hour offline uploads its backlog in one payload.
        backlog = [Traversal("423", i, NOW - 60 * MINUTE + i * 1000, 1) for i in range(50)]
        await system.route(await stored(store, backlog))
        await expect_live_equals_history(system, history)
        assert system.live("A").count == 51
        assert system.actor("A").reloads == 1


@pytest.mark.parametrize("one_pass", [False, True], ids=["space-by-space", "one-pass"])
async def test_both_ways_of_recovering_start_from_the_same_state(
    store: EventStore, seed: Topology, monkeypatch: pytest.MonkeyPatch, one_pass: bool
) -> None:
    """Recovery either asks the store space by space or folds the whole log in one pass;
    either way every actor starts settled at the same checkpoint with the same recent events,
    and goes on the same way (here: an event out of order in the window, one too late)."""
    monkeypatch.setattr(system_module, "_PER_SPACE_COST_S", 1.0 if one_pass else 0.0)
    history = History(store, seed, snapshot_every=4, snapshot_lag_ms=0)
    await store.log.append(
        [Traversal("283", i, NOW - (60 - i) * MINUTE, 1 if i % 4 else -1) for i in range(58)]
        + [Traversal("423", i, NOW - (30 - i) * MINUTE, -1 if i % 3 else 1) for i in range(29)]
    )
    await store.log.append_reset(Reset("B", NOW - 3 * MINUTE, 7))
    await history.refresh_snapshots(now=NOW)
    system = ActorSystem(history, window_ms=5 * MINUTE, clock=clock)

    await system.recover()

    for space_id in ("A", "B"):
        reference = SpaceActor(space_id, history, window_ms=5 * MINUTE, clock=clock)
        await reference.recover()  # space by space, directly
        actor = system.actor(space_id)
        assert actor.live() == reference.live()
        assert actor._live is not None
        assert reference._live is not None
        assert actor._live.checkpoint == reference._live.checkpoint
        assert actor._live.settled == reference._live.settled
    task = asyncio.create_task(system.run())
    try:
        await system.route(
            await stored(
                store,
                [
                    Traversal("423", 100, NOW - 2 * MINUTE, 1),
                    Traversal("283", 100, NOW - 50 * MINUTE, -1),
                ],
            )
        )
        await expect_live_equals_history(system, history)
    finally:
        task.cancel()
        await asyncio.wait([task])


async def test_stopping_snapshots_only_the_spaces_that_folded_events(
    store: EventStore, seed: Topology, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With many spaces, asking every one for snapshots at shutdown took minutes; only those
    that folded something since their last snapshot have anything to write."""
    history = History(store, seed, snapshot_every=1_000, snapshot_lag_ms=0)
    refreshed: list[list[str]] = []
    refresh = history.refresh_snapshots

    async def spy(space_ids: Iterable[str] | None = None, **kwargs: Any) -> int:
        refreshed.append(list(space_ids or []))
        return await refresh(space_ids, **kwargs)

    monkeypatch.setattr(history, "refresh_snapshots", spy)
    async with ActorSystem(history, clock=clock).running() as system:
        await system.route(await stored(store, [Traversal("283", 1, NOW - MINUTE, 1)]))
        await system.drain()

    assert refreshed == [["A"]]  # DPU 283's doorway X leads into A only


async def test_an_actor_gets_its_mailbox_and_task_with_its_first_event(
    store: EventStore, seed: Topology
) -> None:
    """Idle spaces cost only their live state: with 100,000 spaces, empty queues and waiting
    tasks were a third of the service's memory (bench/scale.py)."""
    async with ActorSystem(History(store, seed), clock=clock).running() as system:
        await asyncio.sleep(0)
        assert not system.actor("A").has_mailbox
        assert not system.actor("B").has_mailbox
        assert system.live("B").count == 0  # answers without a mailbox or task

        await system.route(await stored(store, [Traversal("283", 1, NOW - MINUTE, 1)]))
        await system.drain()

        assert system.live("A").count == 1
        assert system.actor("A").has_mailbox
        assert not system.actor("B").has_mailbox
        names = {t.get_name() for t in asyncio.all_tasks()}
        assert "actor:A" in names
        assert "actor:B" not in names


async def test_a_store_that_is_down_for_a_snapshot_is_one_warning_not_a_traceback(
    store: EventStore,
    seed: Topology,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A database restart is an outage, not a bug: the snapshot writer says why in one line
    and tries again after more events; so do the final snapshots at shutdown."""
    history = History(store, seed, snapshot_every=1, snapshot_lag_ms=0)

    async def down(space_ids: Iterable[str] | None = None, **kwargs: Any) -> int:
        raise StoreError("cannot reach the event store: [Errno 111] Connect call failed")

    monkeypatch.setattr(history, "refresh_snapshots", down)
    with caplog.at_level(logging.WARNING, logger="headcount.actors"):
        async with ActorSystem(history, clock=clock).running() as system:
            await system.route(await stored(store, [Traversal("283", 1, NOW - MINUTE, 1)]))
            await system.drain()
            await eventually(lambda: bool(caplog.records), what="the snapshot failure logged")
    reason = "cannot reach the event store: [Errno 111] Connect call failed"
    assert [(r.levelno, r.exc_info, r.getMessage()) for r in caplog.records] == [
        (
            logging.WARNING,
            None,
            f"snapshots of space A not written ({reason}); retried after more events",
        ),
        (
            logging.WARNING,
            None,
            f"final snapshots not written ({reason}); the next start folds more of the log",
        ),
    ]


async def test_a_space_is_refreshed_at_most_once_per_interval_with_every_snapshot_written(
    store: EventStore, seed: Topology, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refresh costs a transaction whatever it folds: a busy space is refreshed at most once
    per ``snapshot_interval_s``, the events due meanwhile wait for the next one, and that one
    writes the snapshot of every ``snapshot_every`` events it passes."""
    history = History(store, seed, snapshot_every=2, snapshot_lag_ms=0)
    loop = asyncio.get_running_loop()
    refreshes: list[tuple[float, int]] = []
    refresh = history.refresh_snapshots

    async def spy(space_ids: Iterable[str] | None = None, **kwargs: Any) -> int:
        started = loop.time()
        written = await refresh(space_ids, now=NOW, **kwargs)
        refreshes.append((started, written))
        return written

    monkeypatch.setattr(history, "refresh_snapshots", spy)
    interval = 0.3
    system = ActorSystem(history, clock=clock, snapshot_interval_s=interval)
    async with system.running():
        events = [Traversal("283", seq, NOW - (10 - seq) * MINUTE, 1) for seq in range(1, 7)]
        await system.route(await stored(store, events[:2]))
        await eventually(lambda: len(refreshes) == 1, what="the first refresh")
        for pair in (events[2:4], events[4:6]):  # due twice within the interval
            await system.route(await stored(store, pair))
            await system.drain()
        assert len(refreshes) == 1
        await eventually(lambda: len(refreshes) == 2, what="the refresh after the interval")
    (first, _), (second, _), _ = refreshes
    assert second - first >= interval - 0.01  # call_at fires on time or later, never sooner
    # Snapshots after events 2, then 4 and 6 (none skipped); nothing left for the stop.
    assert [written for _, written in refreshes] == [1, 2, 0]
