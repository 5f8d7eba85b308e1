"""Checking a running service's live counts against the log (``headcount replay --verify
--service``). How the live counts are fetched is the caller's: any :class:`ServiceCounts`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from headcount.clock import now_ms
from headcount.domain.fold import SpaceState
from headcount.history.counts import History
from headcount.history.replay import Mismatch


class ServiceCounts(Protocol):
    """A running service's live counts."""

    async def counts(self) -> Mapping[str, int]:
        """Every space's live count, by space id."""
        ...

    async def count(self, space_id: str) -> int:
        """One space's live count, asked afresh."""
        ...


async def live_mismatches(
    history: History, folded: Mapping[str, SpaceState], live: ServiceCounts
) -> list[Mismatch]:
    """The spaces of ``folded`` (each space's fold of the whole log) whose live count
    differs. Events may arrive while the log is folded: a space that differs is asked again
    after folding it afresh, and only a difference that stays is reported."""
    counts = await live.counts()
    found: list[Mismatch] = []
    for space_id, state in folded.items():
        if counts.get(space_id) == state.count:
            continue
        now = now_ms()
        fresh = (await history.count_at(space_id, now)).state
        answer = await live.count(space_id)
        if answer != fresh.count:
            said = SpaceState(now, answer)
            found.append(Mismatch(space_id, now, said, fresh, what="live count"))
    return found
