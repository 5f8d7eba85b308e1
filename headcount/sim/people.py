"""People walking through doorways over simulated days: the moves that really happened.

Each person has a home space (an office, say) and, on each local day of the home space's time
zone, may come in: arrive in the morning, perhaps go out for lunch and come back, perhaps visit
a nearby space for a meeting, and leave in the evening. Every trip follows a shortest route
through usable doorways, one :class:`Step` per doorway. :func:`walk` gives the true steps in
time order; :func:`true_counts`, from where everyone is after each, the
:class:`~headcount.sim.truth.Truth`.

Pure and deterministic: the same floor plan and :class:`Population` give the same steps. Each
person draws from their own random stream, so adding people leaves the others' days unchanged.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from headcount.domain.events import Direction
from headcount.domain.timefmt import from_ms, to_ms
from headcount.domain.topology import Topology
from headcount.sim.floorplan import OUTSIDE, FloorPlan, Hop, Location
from headcount.sim.truth import Truth

MINUTE = 60_000
HOUR = 60 * MINUTE

#: The day curve, in local hours as (earliest, most likely, latest) of a triangular draw.
ARRIVAL = (6.0, 8.5, 11.0)
LUNCH = (11.5, 12.25, 13.75)
DEPARTURE = (15.0, 17.5, 21.5)
#: Share of people who come in on a weekday and on a weekend day.
ATTENDANCE = (0.9, 0.3)
#: Share of those in who go out for lunch, and how long they stay out (minutes).
LUNCH_OUT = 0.6
LUNCH_MINUTES = (20, 70)
#: How many meetings elsewhere a person has in a day (drawn from these), and their length.
MEETINGS = (0, 0, 1, 1, 2, 3)
MEETING_MINUTES = (15, 60)
#: Quiet time kept around each absence, so a person's trips never overlap.
MARGIN = 10 * MINUTE
#: Walking time between two doorways of one route, on top of the minimum gap (ms).
STROLL_MS = 20_000


@dataclass(frozen=True, slots=True)
class Population:
    """Who walks when: ``people`` people over ``[start, end)`` (ms, UTC), drawn from ``seed``.

    ``min_gap_ms`` is the least time between two doorways one person walks through. The
    simulator makes it more than twice the largest DPU clock skew, so that the order of one
    person's passages survives the skew: then the fold never floors a count at zero that the
    truth does not (see the README's ``simulate`` section).
    """

    people: int
    start: int
    end: int
    seed: int
    min_gap_ms: int = 5_000

    def __post_init__(self) -> None:
        if self.people < 0 or self.end <= self.start or self.min_gap_ms < 1:
            raise ValueError(
                f"a population needs people >= 0, start < end, min_gap_ms >= 1: {self}"
            )


@dataclass(frozen=True, slots=True)
class Step:
    """One person passing through one doorway at ``ts`` (true time, ms): the fact a DPU over
    that doorway would report with ``direction``."""

    ts: int
    person: int
    doorway_id: str
    origin: Location
    destination: Location
    direction: Direction


@dataclass(frozen=True, slots=True)
class _Trip:
    """Leave for ``route`` at ``at`` (ms) at the earliest."""

    at: int
    route: Sequence[Hop]


def homes(floor: FloorPlan, population: Population) -> list[str]:
    """Each person's home space, drawn among the spaces reachable from outside."""
    rng = random.Random(f"{population.seed}:homes")
    return [rng.choice(floor.reachable) for _ in range(population.people)]


def walk(floor: FloorPlan, topology: Topology, population: Population) -> list[Step]:
    """Every step of every person, in time order (ties by person)."""
    steps: list[Step] = []
    for person, home in enumerate(homes(floor, population)):
        rng = random.Random(f"{population.seed}:person:{person}")
        zone = ZoneInfo(topology.space(home).time_zone)
        steps.extend(_person_steps(floor, population, person, home, zone, rng))
    steps.sort(key=lambda step: (step.ts, step.person))
    return steps


def true_counts(floor: FloorPlan, topology: Topology, steps: Sequence[Step], start: int) -> Truth:
    """The true count of every space over time, from where each person is after each step:
    a person at a location is in it and in every space around it."""
    counts = dict.fromkeys(topology.spaces, 0)
    changes: dict[str, list[tuple[int, int]]] = {space_id: [(start, 0)] for space_id in counts}
    for step in steps:
        was_in = floor.containing(step.origin)
        now_in = floor.containing(step.destination)
        for space_id in was_in:
            if space_id not in now_in:
                counts[space_id] -= 1
                changes[space_id].append((step.ts, counts[space_id]))
        for space_id in now_in:
            if space_id not in was_in:
                counts[space_id] += 1
                changes[space_id].append((step.ts, counts[space_id]))
    return Truth(start, changes)


def _person_steps(
    floor: FloorPlan,
    population: Population,
    person: int,
    home: str,
    zone: ZoneInfo,
    rng: random.Random,
) -> Iterator[Step]:
    """One person's steps over the whole span; a day that would begin before the start is
    skipped (nobody is inside at the start), and nothing happens at or after the end."""
    free_at = population.start
    for day in _local_days(population.start, population.end, zone):
        trips = _day(floor, home, day, zone, rng)
        if trips is None or trips[0].at < population.start:
            continue
        for trip in trips:
            ts = max(trip.at, free_at)
            for hop in trip.route:
                if ts >= population.end:
                    return
                yield Step(
                    ts,
                    person,
                    hop.opening.doorway_id,
                    hop.origin,
                    hop.destination,
                    hop.opening.direction(hop.destination),
                )
                ts += population.min_gap_ms + rng.randrange(STROLL_MS)
            free_at = ts


def _local_days(start: int, end: int, zone: ZoneInfo) -> Iterator[date]:
    day = from_ms(start).astimezone(zone).date()
    last = from_ms(end).astimezone(zone).date()
    while day <= last:
        yield day
        day += timedelta(days=1)


def _day(
    floor: FloorPlan, home: str, day: date, zone: ZoneInfo, rng: random.Random
) -> list[_Trip] | None:
    """One person's trips on one local day, or None if they stay away that day."""
    if rng.random() >= ATTENDANCE[1 if day.weekday() >= 5 else 0]:
        return None
    arrive = _local(day, zone, rng.triangular(ARRIVAL[0], ARRIVAL[2], ARRIVAL[1]))
    leave = _local(day, zone, rng.triangular(DEPARTURE[0], DEPARTURE[2], DEPARTURE[1]))
    absences: list[tuple[int, int, list[Hop]]] = []
    if rng.random() < LUNCH_OUT:
        out = _local(day, zone, rng.triangular(LUNCH[0], LUNCH[2], LUNCH[1]))
        absences.append(
            (out, out + rng.randint(*LUNCH_MINUTES) * MINUTE, floor.route_out(home, rng))
        )
    for _ in range(rng.choice(MEETINGS)):
        route = floor.nearby(home, rng)
        if route and leave - arrive > 3 * HOUR:
            begin = rng.randrange(arrive + HOUR, leave - HOUR)
            absences.append((begin, begin + rng.randint(*MEETING_MINUTES) * MINUTE, route))
    trips = [_Trip(arrive, floor.route_in(home, rng))]
    busy_until = arrive + MARGIN
    for begin, end, route in sorted(absences, key=lambda absence: absence[0]):
        if begin < busy_until or end + MARGIN > leave:
            continue  # it would overlap another absence or the departure: skipped that day
        trips.append(_Trip(begin, route))
        trips.append(_Trip(end, _back(route, floor, home, rng)))
        busy_until = end + MARGIN
    trips.append(_Trip(leave, floor.route_out(home, rng)))
    return trips


def _back(route: Sequence[Hop], floor: FloorPlan, home: str, rng: random.Random) -> list[Hop]:
    """The way home from where ``route`` led: back in from outside, or the same way back."""
    if route[-1].destination is OUTSIDE:
        return floor.route_in(home, rng)
    return [hop.reversed() for hop in reversed(route)]


def _local(day: date, zone: ZoneInfo, hours: float) -> int:
    """``hours`` after local midnight of ``day`` in ``zone``, as ms UTC (wall-clock time, so
    an 08:30 arrival stays 08:30 across a DST change). Millisecond resolution keeps two
    people's arrivals at one door from landing in the same millisecond."""
    ms = round(hours * HOUR)
    wall = datetime.combine(day, time()) + timedelta(milliseconds=ms)
    return to_ms(wall.replace(tzinfo=zone))
