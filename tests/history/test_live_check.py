"""Live counts against the log: a difference is reported only when it stays after the space
is folded afresh and asked again."""

from __future__ import annotations

from collections.abc import Mapping

from headcount.domain.fold import SpaceState
from headcount.eventstore.store import EventStore
from headcount.history import History
from headcount.history.live_check import live_mismatches
from headcount.history.replay import Replay
from tests.history.test_replay import seed, walk


class Live:
    """Live counts as a service would give them: ``first`` when every space is listed,
    then ``again`` when one space is asked afresh."""

    def __init__(self, first: dict[str, int], again: dict[str, int]) -> None:
        self.first, self.again = first, again
        self.asked: list[str] = []

    async def counts(self) -> Mapping[str, int]:
        return self.first

    async def count(self, space_id: str) -> int:
        self.asked.append(space_id)
        return self.again[space_id]


async def folded(store: EventStore) -> tuple[History, dict[str, SpaceState]]:
    topology = seed()
    await store.log.append(walk("283", 3, 0) + walk("423", 1, 100))  # A 4, B 0
    _, _, states = await Replay(store, topology).verify()
    return History(store, topology), states


async def test_live_counts_that_agree(store: EventStore) -> None:
    history, states = await folded(store)
    live = Live({"A": 4, "B": 0}, {})
    assert await live_mismatches(history, states, live) == []
    assert live.asked == []


async def test_a_difference_that_stays_is_reported(store: EventStore) -> None:
    history, states = await folded(store)
    live = Live({"A": 4, "B": 7}, {"B": 7})
    [mismatch] = await live_mismatches(history, states, live)
    assert live.asked == ["B"]
    assert (mismatch.space_id, mismatch.stored.count, mismatch.folded.count) == ("B", 7, 0)
    assert mismatch.describe().startswith("space B: live count at ")


async def test_a_difference_gone_when_asked_again_is_not(store: EventStore) -> None:
    """An event arrived at the service while the log was folded: it differs at first, and
    agrees once the space is folded afresh and asked again."""
    history, states = await folded(store)
    live = Live({"A": 5, "B": 0}, {"A": 5})
    await store.log.append(walk("283", 1, 50))
    assert await live_mismatches(history, states, live) == []
    assert live.asked == ["A"]
