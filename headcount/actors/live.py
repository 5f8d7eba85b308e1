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

from headcount.domain.events import RESET_RANK, TRAVERSAL_RANK, Delta, Reset, SpaceEvent, fold_key
from headcount.domain.fold import Folder, SpaceState, advance
from headcount.domain.topology import Space

EventKey = tuple[int, int, str, int]
#: A traversal's delta to a space as routing hands it over: its fold key
#: ``(ts, TRAVERSAL_RANK, dpu_id, seq)`` and the delta (+1 or -1). Two tuples, no object.
DeltaRow = tuple[EventKey, int]


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


def _key(event: SpaceEvent) -> EventKey:
    """An event's place in fold order, which is also its identity here: the events given are
    stored ones, so a redelivery has the same time as the first delivery, and a space has at
    most one reset per millisecond."""
    if isinstance(event, Delta):
        return (event.ts, TRAVERSAL_RANK, event.dpu_id, event.seq)
    return (event.ts, RESET_RANK, "", 0)


class LiveSpace:
    """``settled`` is the fold of every event with ``ts <= checkpoint``; ``recent`` the events
    after it, in fold order; ``state`` the fold of both.

    The recent events are kept as their keys and values (a delta, or a reset's count) in two
    lists of plain tuples and integers, which the garbage collector stops tracking: a window of
    a busy space holds hundreds of thousands of events, and as objects every collection would
    walk them all. Resets, rare, are also kept whole (in a dict made for the first one: a
    hundred thousand spaces mostly have none)."""

    __slots__ = ("_folder", "_keys", "_resets", "_values", "checkpoint", "settled", "space")

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
        self._values: list[int] = []
        self._resets: dict[EventKey, Reset] | None = None
        for event in sorted(recent, key=fold_key):
            if event.ts <= checkpoint:
                raise ValueError("recent events must be newer than the checkpoint")
            key = _key(event)
            if not self._keys or key != self._keys[-1]:
                self._append(key, event)
        self._folder = Folder(space, settled)
        self._refold()

    def _append(self, key: EventKey, event: SpaceEvent) -> None:
        self._keys.append(key)
        if isinstance(event, Delta):
            self._values.append(event.delta)
        else:
            self._values.append(event.count)
            self._keep_reset(key, event)

    def _insert(self, at: int, key: EventKey, event: SpaceEvent) -> None:
        self._keys.insert(at, key)
        if isinstance(event, Delta):
            self._values.insert(at, event.delta)
        else:
            self._values.insert(at, event.count)
            self._keep_reset(key, event)

    def _keep_reset(self, key: EventKey, reset: Reset) -> None:
        if self._resets is None:
            self._resets = {}
        self._resets[key] = reset

    @property
    def state(self) -> SpaceState:
        """The fold of ``settled`` and ``recent``."""
        return self._folder.state()

    def _refold(self) -> None:
        """Fold ``recent`` on ``settled`` again, in place."""
        self._folder = Folder(self.space, self.settled)
        _fold_into(self._folder, self._keys, self._values)

    @property
    def recent(self) -> tuple[SpaceEvent, ...]:
        resets = self._resets or {}
        return tuple(
            resets[key]
            if key[1] == RESET_RANK
            else Delta(key[0], key[2], key[3], 1 if value > 0 else -1)
            for key, value in zip(self._keys, self._values, strict=True)
        )

    @property
    def newest_ts(self) -> int | None:
        return self._keys[-1][0] if self._keys else self.settled.as_of

    def apply(self, event: SpaceEvent) -> Applied:
        """Fold one event in its place."""
        if event.ts <= self.checkpoint:
            return Applied.TOO_LATE
        key = _key(event)
        keys = self._keys
        if not keys or key > keys[-1]:
            self._append(key, event)
            if isinstance(event, Delta):
                self._folder.delta(event.ts, event.delta)
            else:
                self._folder.reset(event.ts, event.count)
            return Applied.APPENDED
        at = bisect.bisect_left(keys, key)
        if keys[at] == key:
            return Applied.DUPLICATE
        self._insert(at, key, event)
        self._refold()
        return Applied.REFOLDED

    def apply_all(self, events: Iterable[SpaceEvent | DeltaRow]) -> Outcomes:
        """Fold events in their places, as :meth:`apply` does one by one, with one refold at
        the end however many came out of order, and the state kept in place (the live path:
        no object kept per event). A traversal's delta may come as a :data:`DeltaRow`."""
        out = Outcomes()
        keys, values, folder = self._keys, self._values, self._folder
        checkpoint = self.checkpoint
        refold = False
        for event in events:
            if isinstance(event, tuple):
                key, delta = event
            elif isinstance(event, Delta):
                key, delta = (event.ts, TRAVERSAL_RANK, event.dpu_id, event.seq), event.delta
            else:  # a reset: rare, one by one (a pending refold redoes its folding anyway)
                outcome = self.apply(event)
                out.appended += outcome is Applied.APPENDED
                out.resets += outcome is Applied.APPENDED
                out.refolded += outcome is Applied.REFOLDED
                out.duplicates += outcome is Applied.DUPLICATE
                out.too_late += outcome is Applied.TOO_LATE
                folder = self._folder  # a refold replaced it
                continue
            if key[0] <= checkpoint:
                out.too_late += 1
                continue
            if not keys or key > keys[-1]:
                keys.append(key)
                values.append(delta)
                out.appended += 1
                if not refold:
                    folder.delta(key[0], delta)
                continue
            at = bisect.bisect_left(keys, key)
            if keys[at] == key:
                out.duplicates += 1
                continue
            keys.insert(at, key)
            values.insert(at, delta)
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
        moved = self._keys[:cut]
        folder = Folder(self.space, self.settled)
        _fold_into(folder, moved, self._values[:cut])
        self.settled = advance(self.space, folder.state(), until)
        if self._resets:
            for key in moved:
                self._resets.pop(key, None)
        del self._keys[:cut]
        del self._values[:cut]
        self.checkpoint = until
        return cut

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


def _fold_into(folder: Folder, keys: Iterable[EventKey], values: Iterable[int]) -> None:
    for key, value in zip(keys, values, strict=True):
        if key[1] == RESET_RANK:
            folder.reset(key[0], value)
        else:
            folder.delta(key[0], value)
