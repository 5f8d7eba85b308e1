"""The HTTP API: counts now and at any past moment, spaces, DPUs, health and metrics.

Handlers read every resource from the application through the keys in
:mod:`headcount.http.keys`; they hold no state of their own.
"""

from __future__ import annotations

import functools

from aiohttp import hdrs, web
from pydantic_core import to_json

from headcount.actors import SpaceRecoveringError
from headcount.clock import now_ms
from headcount.domain.fold import SpaceState
from headcount.domain.timefmt import format_ms
from headcount.domain.topology import Space, Topology
from headcount.http import dpu_health, events, live, models, series
from headcount.http.api import Routes, answer, parse_query
from headcount.http.auth import check_token
from headcount.http.errors import JSON, NOT_FOUND, error, guard
from headcount.http.keys import ACTORS, CLOCK, DPUS, HISTORY, INGEST, METRICS, SHARD
from headcount.http.limits import check_query
from headcount.http.openapi import document
from headcount.ingest.dpus import Delivery, DpuRegistry

#: The classic Prometheus text format, which ``generate_latest`` writes. Newer prometheus_client
#: releases name a later version in ``CONTENT_TYPE_LATEST`` and offer it only on request.
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


#: The core routes: counts, spaces, DPUs, operations.
routes = Routes()


def add_routes(app: web.Application) -> None:
    """Register the API's routes (every table of :data:`TABLES`), its one middleware (JSON
    errors around, in order, the query limit and the token check, which lets every request in
    when ``app`` has no ``AUTH``), and (on startup, once the resources are attached) the gauges
    that read the actors and the DPU registry."""
    app.middlewares.append(guard(check_query, check_token))
    app[_LISTING] = _Listing()
    app.on_startup.append(_watch_gauges)
    live.setup(app)
    for table in TABLES:
        app.add_routes(table.defs)


async def _watch_gauges(app: web.Application) -> None:
    gauges, actors, dpus = app[METRICS], app[ACTORS], app[DPUS]
    gauges.watch(gauges.mailbox_depth, actors.mailbox_depth)
    gauges.watch(gauges.dpus_online, dpus.online_count)
    topology = actors.topology
    gauges.dpu_last_heard.set_function(
        lambda: (
            (s.dpu_id, s.last_seen / 1000)
            for s in list(dpus.statuses())
            if s.last_seen is not None and topology.knows_dpu(s.dpu_id)
        )
    )


# -- counts --------------------------------------------------------------------------------


# The live answers are dicts encoded by pydantic-core's ``to_json``, not models: a model per
# request, or the standard library's ``json.dumps``, costs several times the encoding itself
# (bench/live_query.py); tests/http/test_openapi.py holds the answers to the models.


@routes.get(
    "/space/{space_id}/count",
    summary="A space's count, now or at `ts` (the seed service's endpoint).",
    query=models.AtQuery,
    answer=models.Count,
    errors=(404, 503),
)
async def space_count_seed(request: web.Request) -> web.Response:
    """``{space_id, ts, count}``: the seed service's answer, unchanged."""
    space_id = request.match_info["space_id"]
    ts, state = await _count(request, space_id)
    return _json({"space_id": space_id, "ts": _format_ms(ts), "count": state.count})


@routes.get(
    "/spaces/{space_id}/count",
    summary="A space's count with its entrances and exits, now or at `ts`.",
    query=models.AtQuery,
    answer=models.CountDetail,
    errors=(404, 503),
)
async def space_count(request: web.Request) -> web.Response:
    """The count with the entrances and exits behind it."""
    space_id = request.match_info["space_id"]
    ts, state = await _count(request, space_id)
    return _json(
        {
            "space_id": space_id,
            "ts": _format_ms(ts),
            "count": state.count,
            "entrances": state.entrances,
            "exits": state.exits,
        }
    )


async def _count(request: web.Request, space_id: str) -> tuple[int, SpaceState]:
    """Live from the space's actor, or from snapshots and the log for ``?ts=``."""
    # The live count parses no query: no model on its hot path.
    at = parse_query(request, models.AtQuery).ts if request.query_string else None
    if at is None:
        return await _live(request.app, space_id)
    return at, (await request.app[HISTORY].count_at(space_id, at)).state


async def _live(app: web.Application, space_id: str) -> tuple[int, SpaceState]:
    """The live state, timed at the answer (never at the newest event, which a DPU's clock
    may have put ahead of ours)."""
    now = app.get(CLOCK, now_ms)()
    state = _live_state(app, space_id)
    if state is None:
        # Served by another shard whose state is not known here: the shared log answers,
        # exactly, a little slower.
        return now, (await app[HISTORY].count_at(space_id, now)).state
    return now, state


def _live_state(app: web.Application, space_id: str) -> SpaceState | None:
    """The space's live state from its actor; ``None`` when another shard serves it."""
    try:
        return app[ACTORS].live_state(space_id)
    except SpaceRecoveringError as e:
        raise error(web.HTTPServiceUnavailable, str(e)) from None


@functools.lru_cache(maxsize=64)
def _format_ms(ms: int) -> str:
    """``format_ms``, remembered: requests in the same millisecond share the text."""
    return format_ms(ms)


def _json(body: object) -> web.Response:
    """``body`` as a JSON answer (``Content-Type`` as ``web.json_response`` gives it)."""
    return web.Response(body=to_json(body), headers=_JSON_TYPE)


_JSON_TYPE = {hdrs.CONTENT_TYPE: f"{JSON}; charset=utf-8"}


# -- spaces --------------------------------------------------------------------------------


@routes.get(
    "/spaces", summary="Every space with its live count.", answer=models.SpaceList, errors=(503,)
)
async def list_spaces(request: web.Request) -> web.Response:
    """Every space of the topology with its live count."""
    app = request.app
    actors = app[ACTORS]
    now: int | None = None
    entries = []
    try:
        for space_id, head in app[_LISTING].entries(actors.topology):
            state = actors.live_state(space_id)
            if state is None:  # another shard's: the log answers, at one moment for all
                now = app.get(CLOCK, now_ms)() if now is None else now
                state = (await app[HISTORY].count_at(space_id, now)).state
            entries.append(b"%s%d}" % (head, state.count))
    except SpaceRecoveringError as e:
        raise error(web.HTTPServiceUnavailable, str(e)) from None
    body = b'{"spaces":[' + b",".join(entries) + b"]}"
    return web.Response(body=body, headers=_JSON_TYPE)


class _Listing:
    """What ``/spaces`` says of each space but its count, encoded once per topology."""

    def __init__(self) -> None:
        self._topology: Topology | None = None
        self._entries: tuple[tuple[str, bytes], ...] = ()

    def entries(self, topology: Topology) -> tuple[tuple[str, bytes], ...]:
        """Each space's id and its entry up to the count (``...,"count":``)."""
        if topology is not self._topology:  # by identity: a Topology's hash reads it all
            self._entries = tuple((space.id, _head(space)) for space in topology.spaces.values())
            self._topology = topology
        return self._entries


def _head(space: Space) -> bytes:
    fixed = {"id": space.id, "name": space.name, "parent": space.parent, "capacity": space.capacity}
    return to_json(fixed)[:-1] + b',"count":'


_LISTING = web.AppKey("space_listing", _Listing)


@routes.get(
    "/spaces/{space_id}",
    summary="A space's settings, doorways and live counts.",
    answer=models.Space,
    errors=(404, 503),
)
async def space_detail(request: web.Request) -> web.Response:
    """A space's settings, its doorways with the DPUs over them now, and its live counts."""
    topology = request.app[ACTORS].topology
    space = topology.space(request.match_info["space_id"])
    _, state = await _live(request.app, space.id)
    return answer(
        models.Space(
            id=space.id,
            name=space.name,
            parent=space.parent,
            children=list(topology.children(space.id)),
            time_zone=space.time_zone,
            daily_reset=_clock_time(space),
            capacity=space.capacity,
            allow_negative=space.allow_negative,
            doorways=_doorways(topology, space.id, now_ms()),
            count=state.count,
            entrances=state.entrances,
            exits=state.exits,
        )
    )


def _clock_time(space: Space) -> str | None:
    return None if space.daily_reset is None else space.daily_reset.strftime("%H:%M")


def _doorways(topology: Topology, space_id: str, now: int) -> list[models.SpaceDoorway]:
    serving: dict[str, list[str]] = {}
    for dpu_id in sorted(topology.dpu_ids()):
        assignment = topology.assignment_at(dpu_id, now)
        if assignment is not None:
            serving.setdefault(assignment.doorway_id, []).append(dpu_id)
    return [
        models.SpaceDoorway(
            id=doorway.id,
            name=doorway.name,
            sensor_placement=link.sensor_placement,
            dpus=serving.get(doorway.id, []),
        )
        for doorway in topology.doorways.values()
        for link in doorway.links
        if link.space_id == space_id
    ]


# -- DPUs ----------------------------------------------------------------------------------


@routes.get("/dpus", summary="Every DPU the topology knows.", answer=models.DpuList)
async def list_dpus(request: web.Request) -> web.Response:
    """Every DPU the topology knows: where it is now and what was last heard from it."""
    topology, dpus, now = request.app[ACTORS].topology, request.app[DPUS], now_ms()
    ids = sorted(topology.dpu_ids())
    return answer(models.DpuList(dpus=[_dpu(topology, dpus, dpu_id, now) for dpu_id in ids]))


@routes.get(
    "/dpus/{dpu_id}",
    summary="A DPU with its assignment history.",
    answer=models.DpuDetail,
    errors=(404,),
)
async def dpu_detail(request: web.Request) -> web.Response:
    """One DPU, with every assignment it had. 404 for a DPU the topology does not know, heard
    from or not: anyone can publish under any DPU id."""
    topology, dpus = request.app[ACTORS].topology, request.app[DPUS]
    dpu_id = request.match_info["dpu_id"]
    if not topology.knows_dpu(dpu_id):
        raise error(web.HTTPNotFound, NOT_FOUND)
    assignments = sorted(
        (a for a in topology.assignments if a.dpu_id == dpu_id), key=lambda a: a.valid_from
    )
    history = [
        models.Assignment(
            doorway=a.doorway_id,
            valid_from=format_ms(a.valid_from),
            valid_until=None if a.valid_until is None else format_ms(a.valid_until),
        )
        for a in assignments
    ]
    dpu = _dpu(topology, dpus, dpu_id, now_ms())
    return answer(models.DpuDetail(**dict(dpu), assignments=history))


def _dpu(topology: Topology, dpus: DpuRegistry, dpu_id: str, now: int) -> models.Dpu:
    status = dpus.get(dpu_id)
    assignment = topology.assignment_at(dpu_id, now)
    return models.Dpu(
        id=dpu_id,
        doorway=None if assignment is None else assignment.doorway_id,
        online=status.online,
        last_seen=None if status.last_seen is None else format_ms(status.last_seen),
        last_seq=status.last_seq,
        delivery=None if status.delivery is None else _delivery(status.delivery),
    )


def _delivery(delivery: Delivery) -> models.Delivery:
    return models.Delivery(
        first=delivery.first,
        seq=delivery.seq,
        sent=delivery.sent,
        stored=delivery.stored,
        missing=delivery.missing,
        reported_at=format_ms(delivery.reported_at),
    )


# -- operations ----------------------------------------------------------------------------


@routes.get(
    "/healthz",
    summary=(
        "Whether every space is being served and ingest keeps up; 503 says why not (spaces"
        " still recovering, or messages waiting for a commit that does not come)."
    ),
    answer=models.Health,
    errors=(503,),
    public=True,
)
async def healthz(request: web.Request) -> web.Response:
    """200 when every space's actor is serving and ingest keeps up; 503 while any space is
    still recovering, or while messages wait for a commit that does not come (the store is
    down, say), with the reason in ``detail``. With ``shard``: the shard this process owns
    or stands by for (a standby is healthy: it answers from the store and the owners)."""
    readiness = request.app[ACTORS].readiness()
    if not readiness.ready:
        waiting = readiness.recovering
        shown = ", ".join(waiting[:10]) + (", ..." if len(waiting) > 10 else "")
        raise error(
            web.HTTPServiceUnavailable,
            f"{len(waiting)} of {readiness.spaces} spaces are still recovering: {shown}",
        )
    ingest = request.app.get(INGEST)
    problem = None if ingest is None else ingest.problem()
    if problem is not None:
        raise error(web.HTTPServiceUnavailable, problem)
    status = request.app[SHARD]() if SHARD in request.app else None
    shard = (
        None
        if status is None
        else models.ShardHealth(
            index=status.shard.index, count=status.shard.count, role=status.role
        )
    )
    health = models.Health(
        status="ok", spaces=readiness.spaces, actor_restarts=readiness.restarts, shard=shard
    )
    return answer(health)


@routes.get(
    "/metrics",
    summary="Prometheus metrics (without a token when the service runs with `--open-metrics`).",
    answer=None,
    content_type="text/plain",
    description="The Prometheus text format (version 0.0.4).",
)
async def metrics(request: web.Request) -> web.Response:
    """The Prometheus text exposition."""
    return web.Response(
        body=request.app[METRICS].render(), headers={"Content-Type": METRICS_CONTENT_TYPE}
    )


@routes.get("/openapi.json", summary="This document.", answer=None, description="OpenAPI 3.1.")
async def openapi(request: web.Request) -> web.Response:
    """This API described as OpenAPI 3.1."""
    return web.json_response(document())


#: Every route table the service serves, the core's first; a feature adds its own here.
TABLES: list[Routes] = [
    routes,
    dpu_health.routes,
    events.routes,
    series.routes,
    live.routes,
]
