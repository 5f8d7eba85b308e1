"""A space's live state: what its actor folds as events arrive, late ones included.

Events newer than ``checkpoint`` are kept in order (``recent``), so one that arrives out of
order is folded in its place by refolding from the checkpoint: the live count always equals
the fold of everything received, floor at zero included. Events older than the checkpoint are
too late to place in memory; the actor reloads the checkpoint's state from the store for them.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from headcount.domain.events import TRAVERSAL_RANK, Delta, SpaceEvent, fold_key
from headcount.domain.fold import Folder, SpaceState, advance, fold_all
from headcount.domain.topology import Space

EventKey = tuple[int, int, str, int]


class Applied(Enum):
    """What :meth:`LiveSpace.apply` did with an event."""

    APPENDED = "appended"  # newest so far: folded on top
    REFOLDED = "refolded"  # out of order, within the window: refolded from the checkpoint
    DUPLICATE = "duplicate"  # already folded
    TOO_LATE = "too_late"  # at or before the checkpoint: the caller must reload


@dataclass(slots=True)
class Outcomes:
    """What :meth:`LiveSpace.apply_all` did with a batch of events, by :class:`Applied`
    (``resets``: how many of those appended were resets)."""

    appended: int = 0
    resets: int = 0
    refolded: int = 0
    duplicates: int = 0
    too_late: int = 0


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
        self._folder = Folder(space, settled)
        self._refold()

    @property
    def state(self) -> SpaceState:
        """The fold of ``settled`` and ``recent``."""
        return self._folder.state()

    def _refold(self) -> None:
        """Fold ``recent`` on ``settled`` again, in place."""
        folder = self._folder = Folder(self.space, self.settled)
        for event in self._recent:
            if isinstance(event, Delta):
                folder.delta(event.ts, event.delta)
            else:
                folder.reset(event.ts, event.count)

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
            if isinstance(event, Delta):
                self._folder.delta(event.ts, event.delta)
            else:
                self._folder.reset(event.ts, event.count)
            return Applied.APPENDED
        at = bisect.bisect_left(self._keys, key)
        self._keys.insert(at, key)
        self._recent.insert(at, event)
        self._refold()
        return Applied.REFOLDED

    def apply_all(self, events: Iterable[SpaceEvent]) -> Outcomes:
        """Fold events in their places, as :meth:`apply` does one by one, with one refold at
        the end however many came out of order, and the state kept in place (the live path:
        no object per event but the event itself)."""
        out = Outcomes()
        keys, recent, seen, folder = self._keys, self._recent, self._seen, self._folder
        checkpoint = self.checkpoint
        refold = False
        for event in events:
            if event.ts <= checkpoint:
                out.too_late += 1
                continue
            if isinstance(event, Delta):
                ident: tuple[str, int] | tuple[int] = (event.dpu_id, event.seq)
                key: EventKey = (event.ts, TRAVERSAL_RANK, event.dpu_id, event.seq)
            else:
                ident = (event.ts,)
                key = fold_key(event)
            if ident in seen:
                out.duplicates += 1
                continue
            seen.add(ident)
            if not keys or key > keys[-1]:
                keys.append(key)
                recent.append(event)
                out.appended += 1
                if isinstance(event, Delta):
                    if not refold:
                        folder.delta(event.ts, event.delta)
                else:
                    out.resets += 1
                    if not refold:
                        folder.reset(event.ts, event.count)
            else:
                at = bisect.bisect_left(keys, key)
                keys.insert(at, key)
                recent.insert(at, event)
                out.refolded += 1
                refold = True
        if refold:
            self._refold()
        return out

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
        self._refold()

    def now(self, ts: int) -> SpaceState:
        """The live state as of ``ts`` (a daily reset may have happened since the last event)."""
        state = self._folder.state()
        if state.as_of is not None and ts < state.as_of:
            return state
        return advance(self.space, state, ts)
