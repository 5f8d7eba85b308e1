"""A DPU's health read from the counts themselves: lost reports, a doorway gone quiet, and a
doorway that counts far more one way than the other.

Everything here is a function of the store, the topology and a moment ``now``: the same
figures for ``GET /dpus/{id}/health`` and, refreshed by :class:`HealthWatch`, for the
``headcount_dpu_*`` gauges.

**Sequence gaps.** A DPU numbers its traversals; between consecutive stored traversals (in
``seq`` order, over the last :attr:`HealthSettings.window_ms`) a jump of more than one is a
gap, the seqs it skips are reports that never made it into the store.

**Quiet.** Traffic through a doorway at a given hour of the week is taken to be a Poisson
process whose rate is the doorway's own: λ(h), its traversals in that local hour of the week
over the :attr:`HealthSettings.weeks` (4) weeks before the silence began (so the silence itself
never lowers the rate), divided by the weeks. With rate λ per hour, the
chance of no event at all in ``t`` hours is ``exp(-λ t)``; over a silence that spans several
hours the exponent is the sum of λ(h) times the part of each hour the silence covers (the
traffic the usual rates expect, ``expected``). The doorway is *quiet* when that chance is
below :attr:`HealthSettings.quiet_p` (0.001: fewer than one silence in a thousand this long is
normal) **and** the doorway usually has traffic at this hour (in at least half the weeks of
history): a doorway silent at 03:00 is asleep, not broken. A doorway with less than a week of
history is never called quiet. Hours are the space's local wall-clock hours (the time zone of
the doorway's first link), so a Tuesday 11:00 is compared with Tuesdays 11:00 across a change
of summer time; in a zone whose offset is not whole hours, the hours are UTC's hours, named by
the local hour they start in.

**Imbalance.** Over the last :attr:`HealthSettings.window_ms` (7 days), the traversals a DPU
counted at each doorway in each direction, as entrances into and exits from each space the
doorway links (the domain's ``space_delta``). People who go in come out, so over a week the two
are close; a doorway whose larger side is :attr:`HealthSettings.max_ratio` (2) times its
smaller, with at least :attr:`HealthSettings.min_volume` (100) traversals, gets a verdict: the
DPU may be mounted backwards, or it misses people one way. With 100 traversals from a doorway
that is really balanced, a 2:1 split (67 one way) is a 1-in-500 chance.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from headcount.clock import Clock, now_ms
from headcount.domain.events import space_delta
from headcount.domain.topology import Assignment, Source, Topology
from headcount.errors import StoreError
from headcount.eventstore.sensors import HOUR_MS, SeqGaps
from headcount.eventstore.store import EventStore
from headcount.metrics import Metrics

__all__ = [
    "DpuHealth",
    "HealthSettings",
    "HealthWatch",
    "Imbalance",
    "Quiet",
    "SeqGaps",
    "dpu_health",
]

log = logging.getLogger(__name__)

DAY_MS = 24 * HOUR_MS
WEEK_MS = 7 * DAY_MS
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


@dataclass(frozen=True, slots=True)
class HealthSettings:
    """The thresholds, with the reasons for their defaults in the module's docstring."""

    window_ms: int = 7 * DAY_MS
    weeks: int = 4
    quiet_p: float = 0.001
    min_volume: int = 100
    max_ratio: float = 2.0


@dataclass(frozen=True, slots=True)
class Quiet:
    """Silence at the doorway the DPU serves at ``now``, against its usual traffic.

    ``doorway`` is ``None`` when the DPU serves none now (then nothing else is known).
    ``last_event``: the doorway's newest traversal (ms, any DPU that served it);
    ``hour_of_week``: now's local hour, e.g. ``Tue 11:00``; ``weeks``: weeks of history the
    rates come from; ``usual_per_hour``: λ at this hour; ``busy_weeks``: of those weeks, how
    many had traffic at this hour; ``expected``: traversals the usual rates expect over the
    silence; ``p_silence``: ``exp(-expected)``, the chance of a silence this long."""

    doorway: str | None
    time_zone: str | None = None
    last_event: int | None = None
    hour_of_week: str | None = None
    weeks: int = 0
    usual_per_hour: float = 0.0
    busy_weeks: int = 0
    expected: float = 0.0
    p_silence: float = 1.0
    quiet: bool = False


@dataclass(frozen=True, slots=True)
class Imbalance:
    """What the DPU counted at ``doorway`` over the window, for the space one of its links
    ties it to: ``entrances`` into ``space_id`` and ``exits`` out of it; ``verdict`` says what
    is wrong when they are far apart (``None``: nothing to say)."""

    doorway: str
    space_id: str
    entrances: int
    exits: int
    verdict: str | None

    @property
    def ratio(self) -> float | None:
        """Entrances per exit; ``None`` without exits."""
        return None if self.exits == 0 else self.entrances / self.exits


@dataclass(frozen=True, slots=True)
class DpuHealth:
    """A DPU's health at ``at`` (ms), judged by what the store holds."""

    dpu_id: str
    at: int
    window_ms: int
    gaps: SeqGaps
    quiet: Quiet
    imbalance: tuple[Imbalance, ...]
    toward: int
    away: int

    @property
    def imbalance_ratio(self) -> float:
        """The larger direction over the smaller one of everything the DPU counted in the
        window, at any doorway (1: balanced; ``inf``: one way only; ``nan``: nothing
        counted). The same for every link of a doorway, whichever way it faces."""
        big, small = max(self.toward, self.away), min(self.toward, self.away)
        if big == 0:
            return math.nan
        return math.inf if small == 0 else big / small


async def dpu_health(
    store: EventStore,
    topology: Topology,
    dpu_id: str,
    now: int,
    settings: HealthSettings = HealthSettings(),
) -> DpuHealth:
    """The health of ``dpu_id`` at ``now``: a few aggregate reads of the store."""
    after = now - settings.window_ms
    gaps = await store.sensors.seq_gaps(dpu_id, after=after, until=now)
    quiet = await _quiet(store, topology, dpu_id, now, settings)
    imbalance: list[Imbalance] = []
    total_toward = total_away = 0
    for doorway_id, spans in _spans_by_doorway(topology, dpu_id, after, now).items():
        toward, away = await store.sensors.directions(spans, after=after, until=now)
        total_toward, total_away = total_toward + toward, total_away + away
        for link in topology.doorways[doorway_id].links:
            if space_delta(1, link.sensor_placement) == 1:
                entrances, exits = toward, away
            else:
                entrances, exits = away, toward
            verdict = _verdict(link.space_id, entrances, exits, settings)
            imbalance.append(Imbalance(doorway_id, link.space_id, entrances, exits, verdict))
    return DpuHealth(
        dpu_id, now, settings.window_ms, gaps, quiet, tuple(imbalance), total_toward, total_away
    )


def _spans_by_doorway(
    topology: Topology, dpu_id: str, after: int, until: int
) -> dict[str, tuple[Source, ...]]:
    """The DPU's assignments that overlap ``(after, until]``, by doorway, as sources (the
    placement is not used: directions are counted as the DPU reports them)."""
    found: dict[str, list[Source]] = {}
    for a in sorted(topology.assignments, key=lambda a: a.valid_from):
        if a.dpu_id != dpu_id or a.valid_from > until:
            continue
        if a.valid_until is not None and a.valid_until <= after + 1:
            continue
        found.setdefault(a.doorway_id, []).append(_source(a))
    return {doorway: tuple(spans) for doorway, spans in found.items()}


def _source(a: Assignment) -> Source:
    return Source(a.dpu_id, a.doorway_id, 1, a.valid_from, a.valid_until)


def _verdict(space_id: str, entrances: int, exits: int, settings: HealthSettings) -> str | None:
    big, small = max(entrances, exits), min(entrances, exits)
    if big + small < settings.min_volume or big < settings.max_ratio * small:
        return None
    counted = f"{entrances} in, {exits} out over {settings.window_ms / DAY_MS:g} days"
    if entrances > exits:
        return (
            f"counts far more into {space_id!r} than out of it ({counted}): the DPU may be"
            " mounted backwards, or it misses people leaving"
        )
    return (
        f"counts far more out of {space_id!r} than into it ({counted}): the DPU may be"
        " mounted backwards, or it misses people entering"
    )


async def _quiet(
    store: EventStore, topology: Topology, dpu_id: str, now: int, settings: HealthSettings
) -> Quiet:
    assignment = topology.assignment_at(dpu_id, now)
    if assignment is None:
        return Quiet(None)
    doorway = topology.doorways[assignment.doorway_id]
    links = doorway.links
    zone_name = topology.spaces[links[0].space_id].time_zone if links else "UTC"
    zone = ZoneInfo(zone_name)
    sources = tuple(
        _source(a)
        for a in sorted(topology.assignments, key=lambda a: (a.dpu_id, a.valid_from))
        if a.doorway_id == doorway.id
    )
    hour = now // HOUR_MS
    first = min(s.valid_from for s in sources)
    last = await store.sensors.newest(sources, until=now)
    key = _hour_of_week(hour, zone)
    # The silence, from the last event (at most a week back: by then it has lasted through
    # a whole week's usual traffic, and the answer is no longer in doubt).
    since = max(now - WEEK_MS, -1 if last is None else last, first)
    # The usual rates come from the whole weeks before the silence began, so the silence
    # itself never lowers them: each hour of the week appears ``weeks`` times in them.
    end = since // HOUR_MS
    weeks = max(0, min(settings.weeks, (end * HOUR_MS - first) // WEEK_MS))
    found = Quiet(doorway.id, zone_name, last, _name(key), weeks)
    if weeks == 0:
        return found
    # Whole local weeks: across a change of summer time they are an hour more or less.
    start = int(
        (datetime.fromtimestamp(end * 3600, zone) - timedelta(weeks=weeks)).timestamp() // 3600
    )
    counts = await store.sensors.hourly(sources, after=start * HOUR_MS - 1, until=end * HOUR_MS - 1)
    usual: dict[tuple[int, int], int] = {}
    busy = 0
    for h in range(start, end):
        k = _hour_of_week(h, zone)
        n = counts.get(h, 0)
        usual[k] = usual.get(k, 0) + n
        busy += k == key and n > 0
    rate = {k: n / weeks for k, n in usual.items()}
    expected = 0.0
    for h in range(since // HOUR_MS, hour + 1):
        covered = min(now, (h + 1) * HOUR_MS) - max(since, h * HOUR_MS)
        expected += rate.get(_hour_of_week(h, zone), 0.0) * covered / HOUR_MS
    p = math.exp(-expected)
    usually_busy = 2 * busy >= weeks
    return Quiet(
        doorway.id,
        zone_name,
        last,
        _name(key),
        weeks,
        usual_per_hour=rate.get(key, 0.0),
        busy_weeks=busy,
        expected=expected,
        p_silence=p,
        quiet=usually_busy and p < settings.quiet_p,
    )


def _hour_of_week(hour: int, zone: ZoneInfo) -> tuple[int, int]:
    """The local (weekday, hour) that the UTC hour ``hour`` (since the epoch) starts in."""
    local = datetime.fromtimestamp(hour * 3600, zone)
    return local.weekday(), local.hour


def _name(key: tuple[int, int]) -> str:
    return f"{_DAYS[key[0]]} {key[1]:02d}:00"


class HealthWatch:
    """Keeps the ``headcount_dpu_*`` gauges of every DPU of the topology up to date.

    Periodic, not per event: a DPU gone quiet sends nothing that ingest could react to, and
    the 7-day figures change as old events leave the window, so only the passage of time can
    update them. The cost is bounded: one DPU at a time, a few aggregate reads of its own index
    range, the DPUs spread evenly over ``period_s`` (each refreshed once per period) with at
    least ``min_pause_s`` between two, and after each a pause long enough that the pass keeps
    the store busy at most ``duty`` of the time (a slow store or a large fleet makes the pass
    longer, not the load higher). A store that cannot answer leaves the figures as they were
    until the next pass.
    """

    def __init__(
        self,
        store: EventStore,
        topology: Topology,
        metrics: Metrics,
        *,
        clock: Clock = now_ms,
        settings: HealthSettings = HealthSettings(),
        period_s: float = 60.0,
        min_pause_s: float = 0.05,
        duty: float = 0.1,
    ) -> None:
        self._store = store
        self._topology = topology
        self._metrics = metrics
        self._clock = clock
        self._settings = settings
        self._period_s = period_s
        self._min_pause_s = min_pause_s
        self._duty = duty

    async def refresh(self, dpu_id: str) -> DpuHealth | None:
        """Compute one DPU's figures and set its gauges (``None``: the store is down)."""
        try:
            health = await dpu_health(
                self._store, self._topology, dpu_id, self._clock(), self._settings
            )
        except StoreError as e:
            log.info("DPU %r's health not refreshed, the store is unavailable: %s", dpu_id, e)
            return None
        m = self._metrics
        m.dpu_sequence_gaps.labels(dpu_id).set(health.gaps.gaps)
        m.dpu_quiet.labels(dpu_id).set(1 if health.quiet.quiet else 0)
        m.dpu_imbalance_ratio.labels(dpu_id).set(health.imbalance_ratio)
        return health

    async def run(self) -> None:
        """Refresh every DPU, one at a time, for ever (until cancelled)."""
        dpu_ids = sorted(self._topology.dpu_ids())
        if not dpu_ids:
            return
        pause = max(self._min_pause_s, self._period_s / len(dpu_ids))
        while True:
            for dpu_id in dpu_ids:
                started = time.monotonic()
                await self.refresh(dpu_id)
                took = time.monotonic() - started
                await asyncio.sleep(max(pause - took, took * (1 - self._duty) / self._duty))
