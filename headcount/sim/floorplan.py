"""Where people can be, and which two places each doorway joins, read from the topology.

The topology says what a traversal does to each linked space (``delta = direction *
sensor_placement``), not where a person stands. The simulator needs the second, so it derives
it: a person's *location* is the innermost space they are in, or :data:`OUTSIDE`, and being in
a space means being in its ancestors too (the ``parent`` chain: a person in the lobby is in the
ground floor and the building).

A doorway joins two locations. The side its DPU hangs on is inside every space linked with
``+1`` and outside every space linked with ``-1``; the far side is the reverse; a space it does
not link is the same on both sides. Walking from the far side to the DPU side is direction
``+1`` (toward the DPU), and then each linked space changes by exactly ``direction *
sensor_placement``, which is what the fold counts. A doorway whose links cannot be read that way
under the parent chain (it links two spaces of one side that are not nested, say) is left
unused, with the reason.

Pure: no I/O, no randomness of its own (callers pass their ``random.Random``).
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from headcount.domain.events import Direction
from headcount.domain.topology import Doorway, Topology
from headcount.sim.errors import FloorPlanError

#: A person's location: the id of the innermost space they are in, or :data:`OUTSIDE`.
Location = str | None
#: Outside every space.
OUTSIDE: Final[Location] = None


@dataclass(frozen=True, slots=True)
class Opening:
    """A doorway as people use it: the location on the DPU's side and the one on the far side."""

    doorway_id: str
    dpu_side: Location
    far_side: Location

    def direction(self, destination: Location) -> Direction:
        """What the DPU reports for a person walking through to ``destination``."""
        return 1 if destination == self.dpu_side else -1

    def beyond(self, origin: Location) -> Location:
        """The location on the other side from ``origin``."""
        return self.far_side if origin == self.dpu_side else self.dpu_side


@dataclass(frozen=True, slots=True)
class Hop:
    """One doorway on a route: through ``opening`` from ``origin`` to ``destination``."""

    opening: Opening
    origin: Location
    destination: Location

    def reversed(self) -> Hop:
        return Hop(self.opening, self.destination, self.origin)


def describe(location: Location) -> str:
    """A location for messages: ``space "L"`` or ``outside``."""
    return "outside" if location is OUTSIDE else f"space {location!r}"


class FloorPlan:
    """The locations of a topology and the doorways between them.

    ``usable`` limits the doorways people walk through (the simulator passes those one DPU
    serves for the whole run, so every passage is reported); the others are in :attr:`unusable`
    with the reason.
    """

    def __init__(self, topology: Topology, usable: Iterable[str] | None = None) -> None:
        allowed = set(topology.doorways if usable is None else usable)
        self._parents = {space.id: space.parent for space in topology.spaces.values()}
        openings: dict[str, Opening] = {}
        unusable: dict[str, str] = {}
        for doorway in topology.doorways.values():
            if doorway.id not in allowed:
                unusable[doorway.id] = "no DPU serves it for the whole run"
                continue
            opening = self._opening(doorway)
            if isinstance(opening, str):
                unusable[doorway.id] = opening
            else:
                openings[doorway.id] = opening
        self.openings: Mapping[str, Opening] = MappingProxyType(openings)
        self.unusable: Mapping[str, str] = MappingProxyType(unusable)
        self._neighbours: dict[Location, list[Hop]] = {}
        for opening in openings.values():
            for origin in (opening.far_side, opening.dpu_side):
                hop = Hop(opening, origin, opening.beyond(origin))
                self._neighbours.setdefault(origin, []).append(hop)
        self._steps_out = self._distances(OUTSIDE)
        if len(self._steps_out) < 2:
            raise FloorPlanError(
                "no usable doorway leads in from outside, so nobody can enter: link a doorway"
                ' to a space on one side only (e.g. links = [{ space = "A",'
                " sensor_placement = 1 }]) and assign a DPU to it for the whole run"
                + _unusable_hint(unusable)
            )
        #: Every space a person can reach from outside, in topology order.
        self.reachable: tuple[str, ...] = tuple(
            space_id for space_id in topology.spaces if space_id in self._steps_out
        )

    def containing(self, location: Location) -> tuple[str, ...]:
        """The spaces a person at ``location`` is in: it and its ancestors, innermost first."""
        found: list[str] = []
        current = location
        while current is not None:
            found.append(current)
            current = self._parents[current]
        return tuple(found)

    def hops(self, location: Location) -> tuple[Hop, ...]:
        """Every usable doorway out of ``location``, in topology order."""
        return tuple(self._neighbours.get(location, ()))

    def route_out(self, origin: Location, rng: random.Random) -> list[Hop]:
        """A shortest way from ``origin`` to outside; ties are drawn from ``rng`` so that a
        space with several exits uses all of them."""
        route: list[Hop] = []
        current = origin
        while current is not OUTSIDE:
            closer = [
                hop
                for hop in self._neighbours[current]
                if self._steps_out[hop.destination] < self._steps_out[current]
            ]
            hop = rng.choice(closer)
            route.append(hop)
            current = hop.destination
        return route

    def route_in(self, destination: Location, rng: random.Random) -> list[Hop]:
        """A shortest way from outside to ``destination``."""
        return [hop.reversed() for hop in reversed(self.route_out(destination, rng))]

    def nearby(self, origin: Location, rng: random.Random, max_hops: int = 3) -> list[Hop]:
        """A shortest way from ``origin`` to a space drawn from those within ``max_hops``
        doorways (a meeting room down the corridor); ``[]`` if there is none."""
        came_by: dict[Location, Hop | None] = {origin: None}
        frontier = deque([(origin, 0)])
        found: list[Location] = []
        while frontier:
            location, depth = frontier.popleft()
            if depth == max_hops:
                continue
            for hop in self._neighbours.get(location, ()):
                if hop.destination in came_by:
                    continue
                came_by[hop.destination] = hop
                frontier.append((hop.destination, depth + 1))
                if hop.destination is not OUTSIDE:
                    found.append(hop.destination)
        if not found:
            return []
        route: list[Hop] = []
        current: Location = rng.choice(found)
        while (hop_in := came_by[current]) is not None:
            route.append(hop_in)
            current = hop_in.origin
        route.reverse()
        return route

    def _distances(self, source: Location) -> dict[Location, int]:
        steps: dict[Location, int] = {source: 0}
        frontier = deque([source])
        while frontier:
            location = frontier.popleft()
            for hop in self._neighbours.get(location, ()):
                if hop.destination not in steps:
                    steps[hop.destination] = steps[location] + 1
                    frontier.append(hop.destination)
        return steps

    def _opening(self, doorway: Doorway) -> Opening | str:
        """The two locations ``doorway`` joins, or why its links cannot be read as one."""
        near = [link.space_id for link in doorway.links if link.sensor_placement == 1]
        far = [link.space_id for link in doorway.links if link.sensor_placement == -1]
        try:
            if near:
                dpu_side = self._innermost(near)
                far_side = self._innermost(far) if far else self._around(dpu_side, near)
            elif far:
                far_side = self._innermost(far)
                dpu_side = self._around(far_side, far)
            else:
                return "it links no space, so walking through it changes no count"
        except _Unreadable as e:
            return str(e)
        inside_near, inside_far = set(self.containing(dpu_side)), set(self.containing(far_side))
        if inside_near - inside_far != set(near) or inside_far - inside_near != set(far):
            return (
                "its links do not match the spaces' parents: a doorway must link every space a"
                " person enters or leaves through it, the outer ones too, and no other"
            )
        return Opening(doorway.id, dpu_side, far_side)

    def _innermost(self, spaces: list[str]) -> Location:
        """The deepest of ``spaces``, which must be nested in one another."""
        deepest = max(spaces, key=lambda space_id: len(self.containing(space_id)))
        chain = self.containing(deepest)
        if any(space_id not in chain for space_id in spaces):
            shown = ", ".join(repr(space_id) for space_id in spaces)
            raise _Unreadable(
                f"it puts spaces {shown} on one side but they are not nested by parent, so no"
                " single place is on that side; give them parents or split the doorway"
            )
        return deepest

    def _around(self, other: Location, linked: list[str]) -> Location:
        """The side in no linked space: the first unlinked space around ``other`` (the
        location on the linked side), or outside."""
        outer = [space_id for space_id in self.containing(other) if space_id not in linked]
        return outer[0] if outer else OUTSIDE


class _Unreadable(Exception):
    """A doorway's links describe no single location on one side (the message says why)."""


def _unusable_hint(unusable: Mapping[str, str]) -> str:
    if not unusable:
        return ""
    shown = "; ".join(f"doorway {d!r}: {why}" for d, why in list(unusable.items())[:5])
    return f" (unused: {shown})"
