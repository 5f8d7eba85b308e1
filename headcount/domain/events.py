"""The facts headcount folds: traversals reported by DPUs and resets of a space's count.

All timestamps are integers: milliseconds since the Unix epoch, UTC.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Direction = Literal[1, -1]

#: Fold order of events that share a timestamp: resets before traversals, so a reset at ``ts``
#: says "this is the count at the start of this millisecond".
RESET_RANK = 0
TRAVERSAL_RANK = 1
#: A space's daily reset is not stored; where it is listed with stored events it goes first of
#: its millisecond, as the fold applies it before anything at that time.
DAILY_RESET_RANK = -1


@dataclass(frozen=True, slots=True)
class Traversal:
    """One person passing under a DPU: +1 toward it, -1 away from it.

    ``(dpu_id, seq)`` identifies the event: a redelivery with the same key is the same event.
    """

    dpu_id: str
    seq: int
    ts: int
    direction: Direction

    @property
    def key(self) -> tuple[str, int]:
        return (self.dpu_id, self.seq)


@dataclass(frozen=True, slots=True)
class Reset:
    """Sets a space's count to ``count`` at ``ts`` (a person counted the room, say)."""

    space_id: str
    ts: int
    count: int
    source: str = "manual"


@dataclass(frozen=True, slots=True)
class Delta:
    """What one traversal does to one space: ``direction * sensor_placement``."""

    ts: int
    dpu_id: str
    seq: int
    delta: Direction


SpaceEvent = Delta | Reset


def space_delta(direction: int, sensor_placement: int) -> Direction:
    """What a traversal in ``direction`` does to a space whose link to the doorway has
    ``sensor_placement`` (+1: the DPU hangs inside the space): +1 in, -1 out. The one place
    this product is taken."""
    return 1 if direction * sensor_placement > 0 else -1


def fold_key(event: SpaceEvent) -> tuple[int, int, str, int]:
    """The fixed order in which a space folds its events: time, then resets first, then
    ``(dpu_id, seq)``, so the result is a function of the set of events, not of arrival order."""
    if isinstance(event, Reset):
        return (event.ts, RESET_RANK, "", event.count)
    return (event.ts, TRAVERSAL_RANK, event.dpu_id, event.seq)
