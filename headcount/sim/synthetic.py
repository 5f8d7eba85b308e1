"""Synthetic topologies of any size, for scale tests: buildings of rooms, one DPU per doorway.

``spaces`` spaces are grouped in buildings of up to :data:`BUILDING_SIZE`: the building itself,
a lobby inside it, and rooms off the building's corridor (the part of the building in no room).
The front door leads from outside into the lobby and so links the building and the lobby (the
nesting the service must get right); the lobby's inner door leads to the corridor; each room has
a door to the corridor. These are made first, building by building, so with few DPUs the first
buildings are complete. More DPUs add side entrances, doors between neighbouring rooms and second
room doors, round-robin over the buildings. Buildings take turns among a few time zones, and
every space has a daily reset at 03:00 local, while nobody is in.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import time
from itertools import count, pairwise
from typing import Final

from headcount.domain.timefmt import parse_iso
from headcount.domain.topology import Assignment, Doorway, Link, Space, Topology

BUILDING_SIZE: Final = 8
TIME_ZONES: Final = ("UTC", "Europe/Berlin", "America/New_York", "Asia/Tokyo")
DAILY_RESET: Final = time(3, 0)
VALID_FROM: Final = parse_iso("2000-01-01T00:00:00Z")


def synthetic_topology(spaces: int, dpus: int, *, dpu_prefix: str = "sim-") -> Topology:
    """``spaces`` spaces and ``dpus`` doorways, DPU ``{dpu_prefix}dpu{i}`` over the i-th."""
    if spaces < 1 or dpus < 1:
        raise ValueError(
            f"a synthetic topology needs at least one space and one DPU: {spaces=}, {dpus=}"
        )
    buildings = [
        list(range(first, min(first + BUILDING_SIZE, spaces)))
        for first in range(0, spaces, BUILDING_SIZE)
    ]
    space_list: list[Space] = []
    for number, members in enumerate(buildings):
        zone = TIME_ZONES[number % len(TIME_ZONES)]
        for position, _ in enumerate(members):
            space_list.append(
                Space(
                    id=_space_id(number, position),
                    name=_space_name(number, position),
                    parent=None if position == 0 else _space_id(number, 0),
                    time_zone=zone,
                    daily_reset=DAILY_RESET,
                )
            )
    doorways: list[Doorway] = []
    for doorway in _doorways([len(members) for members in buildings]):
        if len(doorways) == dpus:
            break
        doorways.append(doorway)
    assignments = [
        Assignment(f"{dpu_prefix}dpu{i}", doorway.id, VALID_FROM)
        for i, doorway in enumerate(doorways)
    ]
    return Topology(space_list, doorways, assignments, source="<synthetic>")


def _space_id(building: int, position: int) -> str:
    if position == 0:
        return f"B{building}"
    if position == 1:
        return f"B{building}-lobby"
    return f"B{building}-R{position - 1}"


def _space_name(building: int, position: int) -> str:
    if position == 0:
        return f"Building {building}"
    if position == 1:
        return f"Building {building} lobby"
    return f"Building {building} room {position - 1}"


def _doorways(sizes: list[int]) -> Iterator[Doorway]:
    """Every building's required doors, then extra doors round-robin, without end."""
    for number, size in enumerate(sizes):
        yield from _required(number, size)
    extras = [_extras(number, size) for number, size in enumerate(sizes)]
    while True:
        for doors in extras:
            yield next(doors)


def _required(building: int, size: int) -> Iterator[Doorway]:
    b = _space_id(building, 0)
    if size == 1:
        yield Doorway(f"{b}-front", f"Building {building} front door", (Link(b, 1),))
        return
    lobby = _space_id(building, 1)
    yield Doorway(f"{b}-front", f"Building {building} front door", (Link(b, 1), Link(lobby, 1)))
    # The DPU hangs in the corridor, outside the lobby: walking toward it leaves the lobby.
    yield Doorway(f"{lobby}-door", f"Building {building} lobby door", (Link(lobby, -1),))
    for position in range(2, size):
        room = _space_id(building, position)
        yield Doorway(f"{room}-door", f"{_space_name(building, position)} door", (Link(room, 1),))


def _extras(building: int, size: int) -> Iterator[Doorway]:
    """Side entrances into the corridor, doors between neighbouring rooms, more room doors."""
    b = _space_id(building, 0)
    rooms = [_space_id(building, position) for position in range(2, size)]
    for n in count(2):
        yield Doorway(f"{b}-side{n}", f"Building {building} side entrance {n}", (Link(b, 1),))
        for left, right in pairwise(rooms):
            yield Doorway(
                f"{left}-{right}-{n}",
                f"Door {n} between {left} and {right}",
                (Link(left, 1), Link(right, -1)),
            )
        for room in rooms:
            yield Doorway(f"{room}-door{n}", f"{room} door {n}", (Link(room, 1),))
