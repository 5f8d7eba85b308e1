"""``GET /dpus/{dpu_id}/health``: a DPU's health read from the counts themselves (see
:mod:`headcount.history.dpu_health` for how each figure is found), with what ingest knows of
it (last heard, its delivery report)."""

from __future__ import annotations

import math

from aiohttp import web
from pydantic import Field

from headcount.clock import now_ms
from headcount.domain.timefmt import format_ms
from headcount.eventstore.sensors import HOUR_MS
from headcount.history.dpu_health import DAY_MS, DpuHealth, Imbalance, Quiet, dpu_health
from headcount.http.api import Model, Routes, answer
from headcount.http.errors import NOT_FOUND, error
from headcount.http.keys import ACTORS, CLOCK, DPUS, STORE
from headcount.http.models import Delivery, Stamp
from headcount.ingest.dpus import Delivery as DeliveryReport
from headcount.ingest.dpus import DpuStatus

__all__ = ["routes"]

routes = Routes()


class LastHeard(Model):
    """What the service last heard from the DPU itself (kept in memory since it started)."""

    at: Stamp | None = Field(description="When its last traversal message arrived; null: none.")
    online: bool | None = Field(description="Its last status message; null: never heard.")
    last_seq: int | None = Field(description="The highest seq it reported.")


class SequenceGaps(Model):
    """Lost reports: jumps in ``seq`` between consecutive stored traversals of the DPU (in seq
    order) over the window, and what its own delivery report says."""

    stored: int = Field(description="Its traversals stored with ts in the window.")
    first_seq: int | None = Field(description="The lowest seq among them.")
    last_seq: int | None = Field(description="The highest seq among them.")
    gaps: int = Field(description="Places where the next stored seq jumps by more than one.")
    missing: int = Field(description="The seqs those jumps skip: reports never stored.")
    delivery: Delivery | None = Field(description="Its last delivery report against the store.")


class QuietCheck(Model):
    """Silence at the doorway the DPU serves now, against that doorway's usual traffic at this
    hour of the week (a Poisson rate from the weeks before the silence)."""

    doorway: str | None = Field(description="The doorway it serves now; null: none.")
    time_zone: str | None = Field(description="The zone whose hours of the week are meant.")
    hour_of_week: str | None = Field(
        description="Now's local hour of the week.", examples=["Tue 11:00"]
    )
    last_event: Stamp | None = Field(description="The doorway's newest traversal; null: none.")
    silent_for_s: float | None = Field(description="Seconds since that traversal.")
    weeks: int = Field(description="Weeks of history the usual rates come from (0: too new).")
    usual_per_hour: float = Field(description="Traversals per hour usual at this hour.")
    expected_gap_s: float | None = Field(
        description="The usual time between traversals at this hour; null: none usual."
    )
    busy_weeks: int = Field(description="Of those weeks, how many had traffic at this hour.")
    expected_events: float = Field(description="Traversals the usual rates expect in the silence.")
    p_silence: float = Field(description="exp(-expected_events): the chance of this silence.")
    quiet: bool = Field(
        description="True when p_silence < 0.001 and the doorway has traffic at this hour in at"
        " least half the weeks: the DPU (or its doorway) has probably stopped counting."
    )


class DoorwayBalance(Model):
    """Entrances and exits the DPU counted at a doorway over the window, for one space the
    doorway links."""

    doorway: str = Field(description="The doorway.")
    space_id: str = Field(description="The space entered and left through it.")
    entrances: int = Field(description="Traversals into the space.")
    exits: int = Field(description="Traversals out of it.")
    ratio: float | None = Field(description="entrances / exits; null without exits.")
    verdict: str | None = Field(
        description="What is wrong when one side is at least twice the other with 100 or more"
        " traversals (mounted backwards, or missing people one way); null: nothing to say."
    )


class DpuHealthAnswer(Model):
    """A DPU's health: lost reports, silence, imbalance."""

    dpu_id: str = Field(description="The DPU.", examples=["283"])
    at: Stamp = Field(description="The moment the figures are for (now).")
    window_days: float = Field(description="The span gaps and imbalance are counted over.")
    last_heard: LastHeard
    sequence_gaps: SequenceGaps
    quiet: QuietCheck
    imbalance: list[DoorwayBalance] = Field(description="Per doorway and space, over the window.")


@routes.get(
    "/dpus/{dpu_id}/health",
    summary="A DPU's health from its counts: lost reports, a doorway gone quiet, imbalance.",
    answer=DpuHealthAnswer,
    errors=(404, 503),
)
async def dpu_health_route(request: web.Request) -> web.Response:
    """404 for a DPU the topology does not know, heard from or not; 503 while the store is
    unavailable (every figure but last heard comes from it)."""
    topology = request.app[ACTORS].topology
    dpu_id = request.match_info["dpu_id"]
    if not topology.knows_dpu(dpu_id):
        raise error(web.HTTPNotFound, NOT_FOUND)
    now = request.app.get(CLOCK, now_ms)()
    health = await dpu_health(request.app[STORE], topology, dpu_id, now)
    return answer(health_answer(health, request.app[DPUS].get(dpu_id)))


def health_answer(health: DpuHealth, status: DpuStatus) -> DpuHealthAnswer:
    """The answer for ``health`` and what ingest knows of the DPU, ``status``."""
    gaps = health.gaps
    return DpuHealthAnswer(
        dpu_id=health.dpu_id,
        at=format_ms(health.at),
        window_days=health.window_ms / DAY_MS,
        last_heard=LastHeard(
            at=None if status.last_seen is None else format_ms(status.last_seen),
            online=status.online,
            last_seq=status.last_seq,
        ),
        sequence_gaps=SequenceGaps(
            stored=gaps.stored,
            first_seq=gaps.first,
            last_seq=gaps.last,
            gaps=gaps.gaps,
            missing=gaps.missing,
            delivery=None if status.delivery is None else _delivery(status.delivery),
        ),
        quiet=_quiet(health.quiet, health.at),
        imbalance=[_balance(i) for i in health.imbalance],
    )


def _delivery(d: DeliveryReport) -> Delivery:
    return Delivery(
        first=d.first,
        seq=d.seq,
        sent=d.sent,
        stored=d.stored,
        missing=d.missing,
        reported_at=format_ms(d.reported_at),
    )


def _quiet(q: Quiet, now: int) -> QuietCheck:
    rate = q.usual_per_hour
    return QuietCheck(
        doorway=q.doorway,
        time_zone=q.time_zone,
        hour_of_week=q.hour_of_week,
        last_event=None if q.last_event is None else format_ms(q.last_event),
        silent_for_s=None if q.last_event is None else max(0, now - q.last_event) / 1000,
        weeks=q.weeks,
        usual_per_hour=rate,
        expected_gap_s=None if rate == 0 else HOUR_MS / 1000 / rate,
        busy_weeks=q.busy_weeks,
        expected_events=q.expected,
        p_silence=q.p_silence,
        quiet=q.quiet,
    )


def _balance(i: Imbalance) -> DoorwayBalance:
    ratio = i.ratio
    return DoorwayBalance(
        doorway=i.doorway,
        space_id=i.space_id,
        entrances=i.entrances,
        exits=i.exits,
        ratio=None if ratio is None or not math.isfinite(ratio) else ratio,
        verdict=i.verdict,
    )
