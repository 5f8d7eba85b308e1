"""Values that cross the store's boundary. Frozen: a stored fact does not change."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from headcount.domain.events import Traversal
from headcount.domain.fold import SpaceState
from headcount.domain.rollups import Rollup


@dataclass(frozen=True, slots=True)
class Conflict:
    """A report that reuses a stored ``(dpu_id, seq)`` with different content."""

    reported: Traversal
    stored: Traversal

    @property
    def reason(self) -> str:
        r, s = self.reported, self.stored
        return (
            f"DPU {r.dpu_id!r} seq {r.seq} is already stored as ts={s.ts} direction={s.direction};"
            f" this report says ts={r.ts} direction={r.direction}. The stored event is kept;"
            " check the DPU's firmware for a seq counter that went backwards"
        )


@dataclass(frozen=True, slots=True)
class AppendResult:
    """What an append did: ``new`` were stored now (with their log positions); ``duplicates``
    were already stored (or repeated in the batch) and changed nothing; ``conflicts`` went to
    quarantine."""

    new: tuple[Traversal, ...]
    positions: tuple[int, ...]
    duplicates: int
    conflicts: tuple[Conflict, ...]


@dataclass(frozen=True, slots=True)
class Head:
    """How far the store's logs go: the newest traversal position and reset id."""

    position: int
    reset_id: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A space's state as of ``state.as_of``, covering the logs up to ``head``, folded under
    the topology with ``fingerprint`` for that space."""

    space_id: str
    fingerprint: str
    state: SpaceState
    head: Head
    taken_at: int = 0
    generation: int = 0

    @property
    def as_of(self) -> int:
        if self.state.as_of is None:
            raise ValueError("a snapshot needs a state with an as_of time")
        return self.state.as_of


@dataclass(frozen=True, slots=True)
class RolledUp:
    """Rollups of a space (``domain.rollups``) folded from the logs up to ``head`` under the
    topology with ``fingerprint``, with the time up to which stored snapshots of the space
    already cover its events (``covered``: the newest one's ``as_of``)."""

    space_id: str
    fingerprint: str
    head: Head
    covered: int
    rollups: Sequence[Rollup]


@dataclass(frozen=True, slots=True)
class StoredReset:
    """A reset as stored, with its id (its place in the reset log)."""

    id: int
    space_id: str
    ts: int
    count: int
    source: str


@dataclass(frozen=True, slots=True)
class LateMark:
    """A traversal stored late (see ``schema.traversals``): where and when it landed."""

    dpu_id: str
    ts: int
    position: int


@dataclass(frozen=True, slots=True)
class QuarantineEntry:
    """Input refused with a reason. ``origin`` says where it came from (an MQTT topic, a file
    and line); ``payload`` is the raw bytes as received."""

    origin: str
    reason: str
    payload: bytes
    received_at: int = 0


@dataclass(frozen=True, slots=True)
class ReplayedSpace:
    """A space a replay finished: folded from ``from_ts`` (``None``: from the start of the
    log), ``events`` deltas and resets folded, ``snapshots`` written."""

    space_id: str
    from_ts: int | None
    events: int
    snapshots: int
