"""A space's live state: what its actor folds as events arrive, late ones included.

Events newer than ``checkpoint`` are kept in order (``recent``), so one that arrives out of
order is folded in its place by refolding from the checkpoint: the live count always equals
the fold of everything received, floor at zero included. Events older than the checkpoint are
too late to place in memory; the actor reloads the checkpoint's state from the store for them.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from enum import Enum

from headcount.domain.events import Delta, SpaceEvent, fold_key
from headcount.domain.fold import SpaceState, advance, fold, fold_all
from headcount.domain.topology import Space

EventKey = tuple[int, int, str, int]


class Applied(Enum):
    """What :meth:`LiveSpace.apply` did with an event."""

    APPENDED = "appended"  # newest so far: folded on top
    REFOLDED = "refolded"  # out of order, within the window: refolded from the checkpoint
    DUPLICATE = "duplicate"  # already folded
    TOO_LATE = "too_late"  # at or before the checkpoint: the caller must reload


def identity(event: SpaceEvent) -> tuple[str, int] | tuple[int]:
    """What makes two events the same event (a redelivery)."""
    if isinstance(event, Delta):
        return (event.dpu_id, event.seq)
    return (event.ts,)


class LiveSpace:
    """``settled`` is the fold of every event with ``ts <= checkpoint``; ``recent`` the events
    after it, in fold order; ``state`` the fold of both."""

    def __init__(
        self,
        space: Space,
        settled: SpaceState,
        checkpoint: int,
        recent: Iterable[SpaceEvent] = (),
    ) -> None:
        self.space = space
        self.settled = settled
        self.checkpoint = checkpoint
        self._keys: list[EventKey] = []
        self._recent: list[SpaceEvent] = []
        self._seen: set[tuple[str, int] | tuple[int]] = set()
        for event in sorted(recent, key=fold_key):
            if event.ts <= checkpoint:
                raise ValueError("recent events must be newer than the checkpoint")
            if identity(event) not in self._seen:
                self._seen.add(identity(event))
                self._keys.append(fold_key(event))
                self._recent.append(event)
        self.state = fold_all(space, settled, self._recent)

    @property
    def recent(self) -> tuple[SpaceEvent, ...]:
        return tuple(self._recent)

    @property
    def newest_ts(self) -> int | None:
        return self._recent[-1].ts if self._recent else self.settled.as_of

    def apply(self, event: SpaceEvent) -> Applied:
        """Fold one event in its place."""
        if event.ts <= self.checkpoint:
            return Applied.TOO_LATE
        ident = identity(event)
        if ident in self._seen:
            return Applied.DUPLICATE
        self._seen.add(ident)
        key = fold_key(event)
        if not self._keys or key > self._keys[-1]:
            self._keys.append(key)
            self._recent.append(event)
            self.state = fold(self.space, self.state, event)
            return Applied.APPENDED
        at = bisect.bisect_left(self._keys, key)
        self._keys.insert(at, key)
        self._recent.insert(at, event)
        self.state = fold_all(self.space, self.settled, self._recent)
        return Applied.REFOLDED

    def settle(self, until: int) -> int:
        """Fold the events with ``ts <= until`` into ``settled`` and move the checkpoint there:
        memory stays bounded, and events older than it become too late to place in memory.
        Returns how many events were settled."""
        if until <= self.checkpoint:
            return 0
        cut = bisect.bisect_right(self._keys, (until, 2, "", 0))
        moved = self._recent[:cut]
        self.settled = advance(self.space, fold_all(self.space, self.settled, moved), until)
        for event in moved:
            self._seen.discard(identity(event))
        del self._recent[:cut]
        del self._keys[:cut]
        self.checkpoint = until
        return len(moved)

    def reload(self, settled: SpaceState) -> None:
        """Take a new ``settled`` state for the same checkpoint (after a too-late event was
        folded into it from the store) and refold the recent events on top."""
        self.settled = settled
        self.state = fold_all(self.space, settled, self._recent)

    def now(self, ts: int) -> SpaceState:
        """The live state as of ``ts`` (a daily reset may have happened since the last event)."""
        if self.state.as_of is not None and ts < self.state.as_of:
            return self.state
        return advance(self.space, self.state, ts)
