"""From true steps to what the DPUs send: which DPU saw each step, what its clock said, and the
faults: missed detections, duplicates, reordering, outages, clock skew and DPUs moved mid-run.

Every decision is drawn here, from the seed, before anything is published, so a run is
reproducible and the firmware (:mod:`headcount.sim.firmware`) only carries it out. Each fault
draws from its own random stream: turning one fault on or off changes nothing about the others.

Sequence numbers are ``ts * 1000 + k``, where ``ts`` is the DPU's (skewed) clock and ``k``
counts the DPU's earlier detections in the same millisecond. They increase strictly with each
detection of a DPU, as the wire requires, and they are the same in every run of the same
simulation, so running it again only redelivers events the store already has.

Pure: no I/O, no asyncio.
"""

from __future__ import annotations

import json
import random
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from headcount.domain.events import Traversal
from headcount.domain.timefmt import format_ms
from headcount.domain.topology import Assignment, Topology
from headcount.sim.errors import ScheduleError
from headcount.sim.people import HOUR, MINUTE, Step

#: Distinct detections a DPU can number within one millisecond of its clock.
PER_MS: Final = 1000


@dataclass(frozen=True, slots=True)
class Faults:
    """What goes wrong, and how often. Rates are probabilities in ``[0, 1]``:

    * ``missed``: per passage, the DPU does not see it (no event at all: real drift);
    * ``duplicates``: per event, the DPU publishes it a second time after the broker took it;
    * ``reorder``: per event, the DPU holds it back until 1 to ``reorder_window`` later
      events were detected, and sends it after them;
    * ``offline``: per DPU and simulated hour, the DPU loses its network for 1 minute to
      ``offline_max_ms`` and uploads its backlog when it is back;
    * ``clock_skew_ms``: each DPU's clock is off by a fixed amount drawn from
      ``[-clock_skew_ms, +clock_skew_ms]``;
    * ``move_dpu``: how many times, mid-run, the DPUs of two doorways trade places.
    """

    missed: float = 0.0
    duplicates: float = 0.0
    reorder: float = 0.0
    reorder_window: int = 5
    offline: float = 0.0
    offline_max_ms: int = 30 * MINUTE
    clock_skew_ms: int = 0
    move_dpu: int = 0

    def __post_init__(self) -> None:
        for name in ("missed", "duplicates", "reorder", "offline"):
            rate = getattr(self, name)
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} is a probability between 0 and 1, not {rate}")
        if self.reorder_window < 1 or self.offline_max_ms < MINUTE:
            raise ValueError(f"reorder_window >= 1 and offline_max_ms >= 1 minute: {self}")
        if self.clock_skew_ms < 0 or self.move_dpu < 0:
            raise ValueError(f"clock_skew_ms and move_dpu cannot be negative: {self}")


@dataclass(frozen=True, slots=True)
class Send:
    """A traversal that its DPU has to send from ``release`` (simulated ms) on. ``duplicate``:
    once the broker has acknowledged it, the DPU publishes it once more."""

    release: int
    traversal: Traversal
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class Outage:
    """DPU ``dpu_id`` has no network during ``[start, end)`` (simulated ms)."""

    dpu_id: str
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class DpuMove:
    """At true time ``at``, DPU ``dpu_id`` was taken from one doorway to another."""

    at: int
    dpu_id: str
    from_doorway: str
    to_doorway: str


@dataclass(frozen=True, slots=True)
class AssignmentChange:
    """A moved DPU's topology entry ``replaced`` becomes ``entries``. Their times are on the
    DPU's own clock, which is what its events' ``ts`` say and what the service attributes by."""

    replaced: Assignment
    entries: tuple[Assignment, ...]


@dataclass(frozen=True)
class Schedule:
    """Everything the simulated DPUs do, decided in advance.

    ``sends`` are in release order (each DPU's in the order it sends them); ``topology`` is the
    given one with the moved DPUs' assignments changed; ``skews`` is each DPU's clock error in
    ms (reported ts = true time + skew).
    """

    topology: Topology
    start: int
    end: int
    dpu_ids: tuple[str, ...]
    sends: tuple[Send, ...]
    outages: tuple[Outage, ...] = ()
    skews: Mapping[str, int] = field(default_factory=dict)
    moves: tuple[DpuMove, ...] = ()
    changes: tuple[AssignmentChange, ...] = ()
    missed: int = 0
    reordered: int = 0

    @property
    def duplicates(self) -> int:
        """How many events are to be published twice."""
        return sum(1 for send in self.sends if send.duplicate)

    def traversals(self) -> list[Traversal]:
        """Every event the DPUs send (each once), in release order."""
        return [send.traversal for send in self.sends]


def served_doorways(
    topology: Topology, start: int, end: int, margin_ms: int
) -> dict[str, Assignment]:
    """Each doorway that one DPU serves for all of ``[start - margin, end + margin]`` (ms),
    with that DPU's assignment (the smallest DPU id, should several). The margin covers the
    DPUs' clock skew: the service attributes an event by the ts its DPU reported."""
    served: dict[str, Assignment] = {}
    for a in topology.assignments:
        covers = a.valid_from <= start - margin_ms and (
            a.valid_until is None or a.valid_until > end + margin_ms
        )
        if covers and (a.doorway_id not in served or a.dpu_id < served[a.doorway_id].dpu_id):
            served[a.doorway_id] = a
    return served


def build_schedule(
    topology: Topology,
    steps: Sequence[Step],
    served: Mapping[str, Assignment],
    *,
    start: int,
    end: int,
    seed: int,
    faults: Faults,
) -> Schedule:
    """The events, faults and topology changes of one run. ``steps`` are the true passages in
    time order, each through a doorway of ``served`` (as :func:`served_doorways` gives)."""
    dpu_ids = tuple(sorted({a.dpu_id for a in served.values()}))
    skews = _skews(dpu_ids, seed, faults.clock_skew_ms)
    moves, serving = _moves(served, start, end, seed, faults.move_dpu)
    changes = _changes(moves, served, skews)
    detected: dict[str, list[tuple[int, Traversal, bool]]] = {dpu_id: [] for dpu_id in dpu_ids}
    missed_rng = random.Random(f"{seed}:missed")
    duplicate_rng = random.Random(f"{seed}:duplicates")
    missed = 0
    for step in steps:
        starts, dpus = serving[step.doorway_id]
        dpu_id = dpus[bisect_right(starts, step.ts) - 1]
        is_missed = missed_rng.random() < faults.missed
        is_duplicate = duplicate_rng.random() < faults.duplicates
        if is_missed:
            missed += 1
            continue
        seen = detected[dpu_id]
        ts = step.ts + skews[dpu_id]
        seq = ts * PER_MS
        if seen and seen[-1][1].ts == ts:
            seq = seen[-1][1].seq + 1
            if seq - ts * PER_MS >= PER_MS:
                raise ScheduleError(
                    f"DPU {dpu_id!r} saw more than {PER_MS} people in the millisecond"
                    f" {format_ms(ts)}; simulate fewer people or more doorways"
                )
        seen.append((step.ts, Traversal(dpu_id, seq, ts, step.direction), is_duplicate))
    sends, reordered = _reordered(detected, dpu_ids, seed, faults)
    return Schedule(
        topology=_moved_topology(topology, changes),
        start=start,
        end=end,
        dpu_ids=dpu_ids,
        sends=sends,
        outages=_outages(dpu_ids, start, end, seed, faults),
        skews=skews,
        moves=moves,
        changes=changes,
        missed=missed,
        reordered=reordered,
    )


def changes_toml(schedule: Schedule) -> str:
    """The moves as TOML to put in the topology file: for each moved DPU, the entries that
    replace its old one. Empty when no DPU moved."""
    blocks: list[str] = []
    for move in schedule.moves:
        blocks.append(
            f"# {format_ms(move.at)}: DPU {_string(move.dpu_id)} moved from doorway"
            f" {_string(move.from_doorway)} to {_string(move.to_doorway)}"
        )
    for change in schedule.changes:
        old = change.replaced
        blocks.append(
            f"\n# Replace the [[assignments]] entry of DPU {_string(old.dpu_id)} at doorway"
            f" {_string(old.doorway_id)} from {format_ms(old.valid_from)} with these"
            " (times on the DPU's clock):"
        )
        for a in change.entries:
            lines = [
                "[[assignments]]",
                f"dpu = {_string(a.dpu_id)}",
                f"doorway = {_string(a.doorway_id)}",
                f"valid_from = {_string(format_ms(a.valid_from))}",
            ]
            if a.valid_until is not None:
                lines.append(f"valid_until = {_string(format_ms(a.valid_until))}")
            blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks) if blocks else ""


def _string(text: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's)."""
    return json.dumps(text, ensure_ascii=True)


def _skews(dpu_ids: Sequence[str], seed: int, skew_ms: int) -> dict[str, int]:
    rng = random.Random(f"{seed}:skew")
    return {dpu_id: rng.randint(-skew_ms, skew_ms) for dpu_id in dpu_ids}


Timeline = tuple[list[int], list[str]]


def _moves(
    served: Mapping[str, Assignment], start: int, end: int, seed: int, count: int
) -> tuple[tuple[DpuMove, ...], dict[str, Timeline]]:
    """``count`` swaps of the DPUs of two doorways at times in the middle 80% of the run, and
    which DPU serves each doorway from when. A swap keeps every doorway served by exactly one
    DPU, so every passage is still reported once."""
    serving: dict[str, Timeline] = {d: ([start], [a.dpu_id]) for d, a in sorted(served.items())}
    if count == 0:
        return (), serving
    doorways = sorted(served)
    if len(doorways) < 2:
        raise ScheduleError(
            "--move-dpu needs two doorways that one DPU each serves for the whole run, so that"
            f" they can trade places; this topology has {len(doorways)}"
        )
    rng = random.Random(f"{seed}:moves")
    span = end - start
    times = sorted(rng.randrange(start + span // 10, end - span // 10) for _ in range(count))
    moves: list[DpuMove] = []
    previous = start
    for at in times:
        at = max(at, previous + 1)
        previous = at
        first, second = rng.sample(doorways, 2)
        one, other = serving[first][1][-1], serving[second][1][-1]
        for doorway, dpu_id in ((first, other), (second, one)):
            serving[doorway][0].append(at)
            serving[doorway][1].append(dpu_id)
        moves.append(DpuMove(at, one, first, second))
        moves.append(DpuMove(at, other, second, first))
    return tuple(moves), serving


def _changes(
    moves: Sequence[DpuMove], served: Mapping[str, Assignment], skews: Mapping[str, int]
) -> tuple[AssignmentChange, ...]:
    """For each moved DPU, its whole-run assignment split at each move (on its own clock)."""
    original = {a.dpu_id: a for a in served.values()}
    changes: list[AssignmentChange] = []
    for dpu_id in sorted({move.dpu_id for move in moves}):
        old = original[dpu_id]
        entries: list[Assignment] = []
        valid_from, doorway = old.valid_from, old.doorway_id
        for move in (m for m in moves if m.dpu_id == dpu_id):
            until = move.at + skews[dpu_id]
            entries.append(Assignment(dpu_id, doorway, valid_from, until))
            valid_from, doorway = until, move.to_doorway
        entries.append(Assignment(dpu_id, doorway, valid_from, old.valid_until))
        changes.append(AssignmentChange(old, tuple(entries)))
    return tuple(changes)


def _moved_topology(topology: Topology, changes: Sequence[AssignmentChange]) -> Topology:
    if not changes:
        return topology
    replaced = {change.replaced: change.entries for change in changes}
    assignments = [e for a in topology.assignments for e in replaced.get(a, (a,))]
    return Topology(
        topology.spaces.values(), topology.doorways.values(), assignments, source="<simulated>"
    )


def _reordered(
    detected: Mapping[str, list[tuple[int, Traversal, bool]]],
    dpu_ids: Sequence[str],
    seed: int,
    faults: Faults,
) -> tuple[tuple[Send, ...], int]:
    """Every send in release order, each held-back event placed after the later event it
    waits for; and how many events are sent after a later one of their DPU. An event whose
    DPU has too few later events to wait for is sent in its place."""
    rng = random.Random(f"{seed}:reorder")
    keyed: list[tuple[int, int, tuple[int, int, int], Send]] = []
    for order, dpu_id in enumerate(dpu_ids):
        events = detected[dpu_id]
        for i, (seen_at, traversal, duplicate) in enumerate(events):
            key, release = (i, 0, i), seen_at
            if rng.random() < faults.reorder:
                after = i + rng.randint(1, faults.reorder_window)
                if after < len(events):
                    key, release = (after, 1, i), events[after][0]
            keyed.append((release, order, key, Send(release, traversal, duplicate)))
    keyed.sort(key=lambda entry: entry[:3])
    sends = tuple(entry[3] for entry in keyed)
    newest: dict[str, int] = {}
    overtaken = 0
    for send in sends:
        event = send.traversal
        if event.seq < newest.get(event.dpu_id, -1):
            overtaken += 1
        newest[event.dpu_id] = max(event.seq, newest.get(event.dpu_id, -1))
    return sends, overtaken


def _outages(
    dpu_ids: Sequence[str], start: int, end: int, seed: int, faults: Faults
) -> tuple[Outage, ...]:
    """For each DPU and simulated hour, an outage with probability ``faults.offline``;
    overlapping outages of one DPU are merged, and none lasts past the end."""
    rng = random.Random(f"{seed}:offline")
    outages: list[Outage] = []
    for dpu_id in dpu_ids:
        mine: list[Outage] = []
        for hour in range(start, end, HOUR):
            if rng.random() >= faults.offline:
                continue
            begin = hour + rng.randrange(HOUR)
            until = min(begin + rng.randint(MINUTE, faults.offline_max_ms), end)
            if begin >= end:
                continue  # the last hour of the run is cut short
            if mine and begin <= mine[-1].end:
                mine[-1] = Outage(dpu_id, mine[-1].start, max(until, mine[-1].end))
            else:
                mine.append(Outage(dpu_id, begin, until))
        outages.extend(mine)
    return tuple(outages)
