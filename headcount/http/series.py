"""Time series over HTTP: ``GET /spaces/{space_id}/counts`` and ``GET /counts`` (several spaces
in one request), buckets of local wall-clock time from ``headcount.history.series``.

A page holds at most ``page_size`` buckets per space (1 to 10,000; 1,000 by default); ``next``
is the path and query of the rest, the same query with ``start_time`` moved to the next
bucket's start (exact: that start is a bucket boundary, so the next page begins with it).
"""

from __future__ import annotations

from functools import cache
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, available_timezones

from aiohttp import web
from pydantic import BeforeValidator, Field, WithJsonSchema
from yarl import URL

from headcount.domain.timefmt import format_local
from headcount.domain.topology import Space
from headcount.errors import UnknownSpaceError
from headcount.history.series import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    Bucket,
    bucket_page,
    series,
)
from headcount.http.api import Model, Query, Routes, parse_query
from headcount.http.errors import error
from headcount.http.keys import HISTORY
from headcount.http.models import Moment

__all__ = ["CountsQuery", "SeriesAnswer", "SeriesList", "SeriesQuery", "routes"]

routes = Routes()

Interval = Literal["1m", "5m", "15m", "1h", "1d", "1w"]
#: Spaces in one ``/counts`` request: with the other parameters, within the API's limit of
#: query parameters (``Limits.query_params``, 16).
MAX_SPACES = 8


@cache
def _zones() -> frozenset[str]:
    return frozenset(available_timezones())


def _check_zone(value: object) -> object:
    """A name of the tz database itself (``available_timezones``): no paths, no ``posix/`` or
    ``right/`` copies."""
    if isinstance(value, str) and value not in _zones():
        raise ValueError(
            f"{value!r} is not a time zone of the tz database;"
            " expected e.g. 'Europe/Berlin', 'America/New_York' or 'UTC'"
        )
    return value


#: A tz database name; the document lists them all, so a client (and a fuzzer) knows which.
TimeZone = Annotated[
    str,
    BeforeValidator(_check_zone),
    WithJsonSchema({"type": "string", "enum": sorted(_zones())}),
]


class SeriesQuery(Query):
    """A series' parameters."""

    start_time: Moment = Field(
        description=(
            "ISO-8601 with an offset (send `+` as `%2B`); the first bucket is the one that holds"
            " it (it starts at the boundary at or before it)."
        ),
        json_schema_extra={"x-one": "timestamp"},
    )
    end_time: Moment = Field(
        description=(
            "ISO-8601 with an offset; the last bucket holds it - 1 ms. At or before"
            " start_time the window is empty: no buckets."
        ),
        json_schema_extra={"x-one": "timestamp"},
    )
    interval: Interval = Field(
        default="1h",
        description=(
            "Buckets on the local clock: 1m, 5m, 15m and 1h start whenever the clock reads a"
            " multiple (a DST day has 23 or 25 hours); 1d runs midnight to midnight local, 1w"
            " Monday 00:00 local to the next."
        ),
    )
    time_zone: TimeZone | None = Field(
        default=None,
        description="A tz database name whose clock the buckets follow; the space's by default.",
        examples=["Europe/Berlin"],
    )
    page_size: int = Field(
        default=DEFAULT_PAGE_SIZE,
        ge=1,
        le=MAX_PAGE_SIZE,
        description="Buckets per space in one answer; `next` gives the rest.",
    )


class CountsQuery(SeriesQuery):
    """Several spaces' series: the series' parameters and the spaces."""

    space_id: list[str] = Field(
        min_length=1,
        max_length=MAX_SPACES,
        description=(
            f"A space's id; repeat it for more (`space_id=A&space_id=B`), up to {MAX_SPACES}."
        ),
    )


_LOCAL = "Local time with its offset, milliseconds (ISO-8601)."


class SeriesBucket(Model):
    """One bucket `[start, end)` of a space's series. Every figure is the fold of the events
    stored when asked, late ones included."""

    start: str = Field(description=f"Start (inclusive). {_LOCAL}")
    end: str = Field(description=f"End (exclusive). {_LOCAL}")
    count: int = Field(
        description="The count after the bucket's last event (`?ts=` at end - 1 ms)."
    )
    min: int = Field(description="The lowest count: at the start and after each event in it.")
    max: int = Field(description="The highest count: at the start and after each event in it.")
    entrances: int = Field(description="Its traversals whose delta for the space is +1.")
    exits: int = Field(description="Its traversals whose delta for the space is -1.")
    events: int = Field(description="Its traversals, manual resets and daily resets.")
    utilization: float | None = Field(
        description="max / capacity; null where the space has no capacity."
    )


class SeriesAnswer(Model):
    """A space's counts in buckets, one page."""

    space_id: str = Field(description="The space's id in the topology.", examples=["A"])
    time_zone: str = Field(description="The zone whose clock the buckets follow.")
    interval: Interval = Field(description="The buckets' interval.")
    results: list[SeriesBucket]
    next: str | None = Field(description="The path and query of the next page; null on the last.")


class SeriesList(Model):
    """Several spaces' counts in buckets; each space's `next` continues it on its own route."""

    spaces: list[SeriesAnswer]


# The answers are built as dicts: up to 10,000 buckets a space, a model each costs measurable
# time; the models above document them and tests/http/test_openapi.py holds answers to them.


def _bucket(b: Bucket, zone: ZoneInfo, capacity: int | None) -> dict[str, Any]:
    return {
        "start": format_local(b.start, zone),
        "end": format_local(b.end, zone),
        "count": b.count,
        "min": b.min,
        "max": b.max,
        "entrances": b.entrances,
        "exits": b.exits,
        "events": b.events,
        "utilization": b.max / capacity if capacity else None,  # a capacity of 0: no ratio
    }


async def _series(request: web.Request, space: Space, query: SeriesQuery) -> dict[str, Any]:
    """One space's answer: its buckets of one page and the path of the next."""
    time_zone = query.time_zone or space.time_zone
    zone = ZoneInfo(time_zone)
    buckets: list[Bucket] = []
    following = None
    page = None
    if query.start_time < query.end_time:  # else an empty window: no buckets
        page = bucket_page(
            query.interval, time_zone, query.start_time, query.end_time, query.page_size
        )
        buckets = await series(request.app[HISTORY], space.id, page.bounds)
    if page is not None and page.next_start is not None:
        rest = {
            "start_time": format_local(page.next_start, zone),
            "end_time": format_local(query.end_time, zone),
            "interval": query.interval,
            **({} if query.time_zone is None else {"time_zone": query.time_zone}),
            "page_size": str(query.page_size),
        }
        following = str(URL.build(path=f"/spaces/{space.id}/counts").with_query(rest))
    return {
        "space_id": space.id,
        "time_zone": time_zone,
        "interval": query.interval,
        "results": [_bucket(b, zone, space.capacity) for b in buckets],
        "next": following,
    }


@routes.get(
    "/spaces/{space_id}/counts",
    summary="A space's counts in buckets of local wall-clock time, a page at a time.",
    query=SeriesQuery,
    answer=SeriesAnswer,
    errors=(404, 503),
)
async def space_counts(request: web.Request) -> web.Response:
    """One space's counts in buckets (an unknown space: the 404 of ``json_errors``)."""
    space = request.app[HISTORY].topology.space(request.match_info["space_id"])
    query = parse_query(request, SeriesQuery)
    return web.json_response(await _series(request, space, query))


@routes.get(
    "/counts",
    summary="Several spaces' counts in buckets (each answered as /spaces/{space_id}/counts).",
    query=CountsQuery,
    answer=SeriesList,
    errors=(404, 503),
)
async def counts(request: web.Request) -> web.Response:
    """Several spaces' counts in buckets, in the order asked, each once."""
    query = parse_query(request, CountsQuery)
    topology = request.app[HISTORY].topology
    spaces: list[Space] = []
    for space_id in dict.fromkeys(query.space_id):
        try:
            spaces.append(topology.space(space_id))
        except UnknownSpaceError:
            raise error(web.HTTPNotFound, f"Not found: no space {space_id!r}.") from None
    return web.json_response({"spaces": [await _series(request, s, query) for s in spaces]})
