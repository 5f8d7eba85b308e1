"""What the simulator tests share: a nested topology, runs planned in memory, and the fold as
the service applies it.

``expected_count`` and ``fold_steps`` fold traversals with :mod:`headcount.domain.fold` as the
service does (links at each event's own ts, fold order, floor at zero, daily resets), so a test
can say what the service must answer for the events the DPUs actually sent.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from headcount.domain.events import Delta, Traversal, fold_key
from headcount.domain.fold import EMPTY, advance, fold_all
from headcount.domain.timefmt import parse_iso
from headcount.domain.topology import Topology
from headcount.sim.floorplan import FloorPlan
from headcount.sim.people import Population, Step, true_counts, walk
from headcount.sim.schedule import Faults, Schedule, build_schedule, served_doorways
from headcount.sim.truth import Truth

SECOND = 1000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR
#: A weekday in the past, for runs that never reach a service.
TUESDAY = parse_iso("2024-03-05T00:00:00Z")


def headquarters(prefix: str = "") -> str:
    """A building with floors, a lobby, a cafe with its own terrace door, offices and a meeting
    room with two doors, plus a separate annex in another time zone. The front door links the
    building, its ground floor and the lobby; the stairs go from the lobby to the first floor.
    DPU ids are ``{prefix}{doorway}``."""
    berlin = 'time_zone = "Europe/Berlin"\ndaily_reset = "03:00"'
    spaces = [
        ("HQ", None, berlin),
        ("G", "HQ", berlin),
        ("L", "G", berlin),
        ("C", "G", berlin),
        ("F1", "HQ", berlin),
        ("O1", "F1", berlin),
        ("M", "F1", berlin),
        ("ANNEX", None, 'time_zone = "UTC"'),
    ]
    doorways = {
        "front": [("HQ", 1), ("G", 1), ("L", 1)],
        "cafe": [("L", 1), ("C", -1)],
        "terrace": [("C", 1), ("G", 1), ("HQ", 1)],
        "stairs": [("L", -1), ("G", -1), ("F1", 1)],
        "office": [("O1", 1)],
        "meeting": [("M", 1)],
        "office-meeting": [("O1", -1), ("M", 1)],
        "annex": [("ANNEX", 1)],
    }
    parts = []
    for space_id, parent, extra in spaces:
        parent_line = f'parent = "{parent}"\n' if parent else ""
        parts.append(f'[[spaces]]\nid = "{space_id}"\nname = "{space_id}"\n{parent_line}{extra}\n')
    for doorway_id, links in doorways.items():
        inline = ", ".join(f'{{ space = "{s}", sensor_placement = {p} }}' for s, p in links)
        parts.append(
            f'[[doorways]]\nid = "{doorway_id}"\nname = "{doorway_id}"\nlinks = [{inline}]\n'
        )
    for doorway_id in doorways:
        parts.append(
            f'[[assignments]]\ndpu = "{prefix}{doorway_id}"\ndoorway = "{doorway_id}"\n'
            'valid_from = "2000-01-01T00:00:00Z"\n'
        )
    return "\n".join(parts)


def expected_count(topology: Topology, events: Iterable[Traversal], space_id: str, ts: int) -> int:
    """The fold of ``events`` (duplicates once) for ``space_id`` at ``ts``."""
    return expected_counts(topology, events, space_id, [ts])[0]


def expected_counts(
    topology: Topology, events: Iterable[Traversal], space_id: str, times: Iterable[int]
) -> list[int]:
    """The fold of ``events`` (duplicates once) for ``space_id`` at each of ``times``
    (ascending), daily resets included."""
    space = topology.space(space_id)
    deltas = _deltas(topology, events, space_id)
    state, folded, counts = EMPTY, 0, []
    for ts in times:
        while folded < len(deltas) and deltas[folded].ts <= ts:
            state = fold_all(space, state, [deltas[folded]])
            folded += 1
        state = advance(space, state, ts)
        counts.append(state.count)
    return counts


def fold_steps(
    topology: Topology, events: Iterable[Traversal], space_id: str
) -> list[tuple[int, int]]:
    """The fold of ``events`` for ``space_id`` after each millisecond that has events:
    ``(ts, count)`` in time order (daily resets between events are not applied)."""
    space = topology.space(space_id)
    deltas = _deltas(topology, events, space_id)
    state = EMPTY
    found: list[tuple[int, int]] = []
    for delta in deltas:
        state = fold_all(space, state, [delta])
        if found and found[-1][0] == delta.ts:
            found[-1] = (delta.ts, state.count)
        else:
            found.append((delta.ts, state.count))
    return found


@dataclass(frozen=True)
class Run:
    """A simulation planned in memory, as ``headcount simulate`` plans it. ``topology`` is the
    one the events assume: with the DPU moves."""

    topology: Topology
    floor: FloorPlan
    steps: list[Step]
    schedule: Schedule
    truth: Truth


def plan_run(
    toml: str,
    *,
    people: int = 60,
    seed: int = 1,
    start: int = TUESDAY,
    duration: int = DAY,
    faults: Faults | None = None,
) -> Run:
    """Plan a run of ``toml`` the way the command does."""
    faults = faults or Faults()
    topology = Topology.from_toml(toml)
    end = start + duration
    served = served_doorways(topology, start, end, faults.clock_skew_ms)
    floor = FloorPlan(topology, served)
    gap = max(5 * SECOND, 2 * faults.clock_skew_ms + SECOND)
    population = Population(people, start, end, seed, min_gap_ms=gap)
    steps = walk(floor, topology, population)
    schedule = build_schedule(
        topology, steps, served, start=start, end=end, seed=seed, faults=faults
    )
    return Run(
        schedule.topology, floor, steps, schedule, true_counts(floor, topology, steps, start)
    )


def _deltas(topology: Topology, events: Iterable[Traversal], space_id: str) -> list[Delta]:
    """What ``events`` (duplicates once) do to ``space_id``, in fold order."""
    return sorted(
        (
            Delta(e.ts, e.dpu_id, e.seq, 1 if e.direction == link.sensor_placement else -1)
            for e in set(events)
            for link in topology.links_at(e.dpu_id, e.ts)
            if link.space_id == space_id
        ),
        key=fold_key,
    )
