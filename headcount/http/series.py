"""Time series over HTTP: ``GET /spaces/{space_id}/counts`` and ``GET /counts`` (several spaces
in one request), buckets of local wall-clock time from ``headcount.history.series``.

A page holds at most ``page_size`` buckets per space (1 to 10,000; 1,000 by default); ``next``
is the path and query of the rest, the same query with ``start_time`` moved to the next
bucket's start (exact: that start is a bucket boundary, so the next page begins with it).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any
from zoneinfo import ZoneInfo, available_timezones

from aiohttp import web
from yarl import URL

from headcount.domain.timefmt import format_local, parse_iso
from headcount.domain.topology import Space
from headcount.errors import InvalidTimestampError, UnknownSpaceError
from headcount.history.series import (
    DEFAULT_PAGE_SIZE,
    INTERVALS,
    MAX_PAGE_SIZE,
    Bucket,
    bucket_page,
    series,
)
from headcount.http.errors import NOT_FOUND, error
from headcount.http.keys import HISTORY

__all__ = ["SeriesQuery", "counts", "space_counts"]

_EXAMPLE = "2026-03-08T00:00:00-05:00"


@dataclass(frozen=True, slots=True)
class SeriesQuery:
    """A series' parameters, checked. ``time_zone`` ``None``: each space's own."""

    start: int
    end: int
    interval: str
    time_zone: str | None
    page_size: int


def _one(request: web.Request, name: str) -> str | None:
    given = request.query.getall(name, [])
    if len(given) > 1:
        raise error(web.HTTPBadRequest, f"{name}: give one value, not {len(given)}")
    return given[0] if given else None


def _time(request: web.Request, name: str) -> int:
    text = _one(request, name)
    if text is None:
        raise error(web.HTTPBadRequest, f"{name}: required, e.g. {name}={_EXAMPLE}")
    try:
        return parse_iso(text)
    except InvalidTimestampError as e:
        hint = ""
        if " " in text.strip():
            hint = " (a '+' in a URL query means a space: send the offset as %2B)"
        raise error(web.HTTPBadRequest, f"{name}: {e}{hint}") from None


@cache
def _zones() -> frozenset[str]:
    return frozenset(available_timezones())


def check_zone(name: str) -> str:
    """``name`` if it is a time zone of the tz database, else a 400 naming it. Only the
    database's own names (``available_timezones``): no paths, no ``posix/`` or ``right/``
    copies."""
    if name not in _zones():
        raise error(
            web.HTTPBadRequest,
            f"time_zone: {name!r} is not a time zone of the tz database;"
            " expected e.g. 'Europe/Berlin', 'America/New_York' or 'UTC'",
        )
    return name


def parse_series_query(request: web.Request) -> SeriesQuery:
    """The series parameters of ``request``, or a 400 naming the one that is wrong."""
    start, end = _time(request, "start_time"), _time(request, "end_time")
    if end <= start:
        raise error(web.HTTPBadRequest, "end_time: must be after start_time")
    interval = _one(request, "interval") or "1h"
    if interval not in INTERVALS:
        raise error(
            web.HTTPBadRequest, f"interval: {interval!r} is not one of {', '.join(INTERVALS)}"
        )
    zone = _one(request, "time_zone")
    size_text = _one(request, "page_size")
    page_size = DEFAULT_PAGE_SIZE
    if size_text is not None:
        try:
            page_size = int(size_text)
        except ValueError:
            page_size = 0
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise error(
                web.HTTPBadRequest,
                f"page_size: {size_text!r} is not a whole number from 1 to {MAX_PAGE_SIZE:,}",
            )
    return SeriesQuery(start, end, interval, None if zone is None else check_zone(zone), page_size)


def _bucket(b: Bucket, zone: ZoneInfo, capacity: int | None) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "start": format_local(b.start, zone),
        "end": format_local(b.end, zone),
        "count": b.count,
        "min": b.min,
        "max": b.max,
        "entrances": b.entrances,
        "exits": b.exits,
        "events": b.events,
    }
    if capacity:  # a capacity of 0 gives no ratio
        answer["utilization"] = b.max / capacity
    return answer


async def space_series(request: web.Request, space: Space, query: SeriesQuery) -> dict[str, Any]:
    """One space's answer: its buckets of one page and the path of the next."""
    time_zone = query.time_zone or space.time_zone
    page = bucket_page(query.interval, time_zone, query.start, query.end, query.page_size)
    buckets = await series(request.app[HISTORY], space.id, page.bounds)
    zone = ZoneInfo(time_zone)
    following = None
    if page.next_start is not None:
        rest = URL.build(path=f"/spaces/{space.id}/counts").with_query(
            {
                "start_time": format_local(page.next_start, zone),
                "end_time": format_local(query.end, zone),
                "interval": query.interval,
                **({} if query.time_zone is None else {"time_zone": query.time_zone}),
                "page_size": str(query.page_size),
            }
        )
        following = str(rest)
    return {
        "space_id": space.id,
        "time_zone": time_zone,
        "interval": query.interval,
        "results": [_bucket(b, zone, space.capacity) for b in buckets],
        "next": following,
    }


async def space_counts(request: web.Request) -> web.Response:
    """One space's counts in buckets."""
    space_id = request.match_info["space_id"]
    try:
        space = request.app[HISTORY].topology.space(space_id)
    except UnknownSpaceError:
        raise error(web.HTTPNotFound, NOT_FOUND) from None
    query = parse_series_query(request)
    return web.json_response(await space_series(request, space, query))


async def counts(request: web.Request) -> web.Response:
    """Several spaces' counts in buckets, each answered as ``/spaces/{space_id}/counts``
    would; each space's ``next`` is the rest of that space's series on its own route."""
    topology = request.app[HISTORY].topology
    space_ids = request.query.getall("space_id", [])
    if not space_ids:
        raise error(web.HTTPBadRequest, "space_id: required, one or more, e.g. space_id=A")
    spaces: list[Space] = []
    for space_id in dict.fromkeys(space_ids):  # each once, in the order asked
        try:
            spaces.append(topology.space(space_id))
        except UnknownSpaceError:
            raise error(web.HTTPNotFound, f"Not found: no space {space_id!r}.") from None
    query = parse_series_query(request)
    answers = [await space_series(request, space, query) for space in spaces]
    return web.json_response({"spaces": answers})
