"""A space's events and resets: ``GET /spaces/{id}/events`` (keyset pages, each event with
the count it left), ``POST /spaces/{id}/resets`` and ``GET /spaces/{id}/resets``.

The listing and the counts come from ``history.timeline``; a reset is handed to the actors
(``RESETS``), which store it and answer once the live count shows it.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Literal

from aiohttp import web
from pydantic import Field, field_validator

from headcount.clock import now_ms
from headcount.domain.events import DAILY_RESET_RANK, RESET_RANK, TRAVERSAL_RANK, Reset
from headcount.domain.timefmt import SUPPORTED_RANGE, format_ms
from headcount.errors import ConflictError
from headcount.history.timeline import Key, events_page, resets_between
from headcount.http.api import Model, Query, Routes, answer, parse_body, parse_query
from headcount.http.errors import error
from headcount.http.keys import CLOCK, HISTORY, RESETS
from headcount.http.models import TS_EXAMPLE, Moment, Stamp
from headcount.ingest.wire import DEFAULT_MAX_SKEW_MS

__all__ = ["decode_cursor", "encode_cursor", "routes"]

routes = Routes()

#: Events per page unless ``page_size`` says otherwise, and the most it may say.
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1_000
#: The most a reset's count may be (the store's column).
MAX_COUNT = 2**31 - 1
#: The longest window of resets listed for a space with a daily reset: one per day.
MAX_DAILY_DAYS = 3_660
_CURSOR_HELP = "give the 'next' of the page before, as it was answered"
_TIME_HELP = (
    "ISO-8601 with a UTC offset (`Z` or `+01:00`; in a query a `+` must be sent as `%2B`),"
    f" from {SUPPORTED_RANGE} (UTC)"
)


# -- cursors -------------------------------------------------------------------------------


def encode_cursor(key: Key) -> str:
    """An opaque cursor for a page's last event key: base64url of its JSON, unpadded."""
    text = json.dumps(list(key), separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(text).decode().rstrip("=")


def decode_cursor(cursor: str) -> Key:
    """The key in a cursor :func:`encode_cursor` made; ``ValueError`` for anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        ts, rank, dpu_id, seq = json.loads(raw)
    except (binascii.Error, ValueError, TypeError):
        raise ValueError(f"not a cursor of this API; {_CURSOR_HELP}") from None
    ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (ts, rank, seq))
    traversal = rank == TRAVERSAL_RANK and isinstance(dpu_id, str) and 0 < len(dpu_id) <= 64
    a_reset = rank in (RESET_RANK, DAILY_RESET_RANK) and dpu_id == "" and seq == 0
    if not ints or not (traversal or a_reset) or abs(ts) > 2**62 or abs(seq) > 2**63:
        raise ValueError(f"not a cursor of this API; {_CURSOR_HELP}")
    return (ts, rank, dpu_id, seq)


# -- models --------------------------------------------------------------------------------


class Window(Query):
    start_time: Moment = Field(
        description=f"The window's start, included: {_TIME_HELP}.",
        json_schema_extra={"x-one": "timestamp"},
    )
    end_time: Moment = Field(
        description=f"The window's end, excluded, after start_time: {_TIME_HELP}.",
        json_schema_extra={"x-one": "timestamp"},
    )


class EventsQuery(Window):
    order: Literal["desc", "asc"] = Field(
        "desc", description="desc: newest first (the default); asc: oldest first."
    )
    page_size: int = Field(
        DEFAULT_PAGE_SIZE,
        ge=1,
        le=MAX_PAGE_SIZE,
        description=f"Events per page, 1 to {MAX_PAGE_SIZE:,} (default {DEFAULT_PAGE_SIZE}).",
    )
    next: str | None = Field(
        None, description="The cursor of the page to answer: the previous page's 'next' link."
    )

    @field_validator("next")
    @classmethod
    def _check_cursor(cls, value: str | None) -> str | None:
        if value is not None:
            decode_cursor(value)
        return value


class SpaceEvent(Model):
    """A traversal or a reset of the space, with the count it left."""

    ts: Stamp = Field(description="When it happened (ISO-8601, UTC).")
    kind: Literal["traversal", "reset", "daily_reset"]
    dpu_id: str | None = Field(description="The DPU that counted it; null for a reset.")
    seq: int | None = Field(description="The DPU's sequence number; null for a reset.")
    doorway: str | None = Field(description="The doorway it crossed; null for a reset.")
    direction: Literal[1, -1] | None = Field(
        description="The DPU's direction (+1 toward it); null for a reset."
    )
    delta: int = Field(
        description="What it did to this space: +1 or -1 for a traversal (the floor at zero"
        " shows in count_after), the change a reset made."
    )
    count_after: int = Field(description="The space's count once it is folded.")


class EventsAnswer(Model):
    space_id: str
    results: list[SpaceEvent]
    next: str | None = Field(description="The next page (a path with its query); null at the end.")


class ResetBody(Model):
    count: int = Field(ge=0, le=MAX_COUNT, description="The count the space has at ts.")
    ts: Moment | None = Field(
        None, description=f"When it was counted: {_TIME_HELP}. Default: now (the server's clock)."
    )

    @field_validator("ts", mode="before")
    @classmethod
    def _text_only(cls, value: object) -> object:
        """A moment is ISO-8601 text: a bare number would be read as milliseconds, unchecked."""
        if value is not None and not isinstance(value, str):
            raise ValueError(f"give ISO-8601 text with a UTC offset, e.g. {TS_EXAMPLE!r}")
        return value


class ResetAnswer(Model):
    space_id: str
    ts: Stamp
    count: int
    kind: Literal["reset"]


class ListedReset(Model):
    ts: Stamp
    count: int
    kind: Literal["reset", "daily_reset"]


class ResetsAnswer(Model):
    space_id: str
    results: list[ListedReset]


# -- handlers ------------------------------------------------------------------------------


def _window(query: Window) -> tuple[int, int]:
    start, end = query.start_time, query.end_time
    if end <= start:
        raise error(
            web.HTTPBadRequest,
            f"end_time: must be after start_time ({format_ms(start)}); the window is"
            " [start_time, end_time)",
        )
    return start, end


@routes.get(
    "/spaces/{space_id}/events",
    summary="The traversals and resets of a space in a window, each with the count it left",
    query=EventsQuery,
    answer=EventsAnswer,
    errors=(400, 404),
)
async def space_events(request: web.Request) -> web.StreamResponse:
    space_id = request.match_info["space_id"]
    request.app[HISTORY].topology.space(space_id)  # an unknown space is 404, whatever the query
    query = parse_query(request, EventsQuery)
    start, end = _window(query)
    page = await events_page(
        request.app[HISTORY],
        space_id,
        start=start,
        end=end,
        page_size=query.page_size,
        descending=query.order == "desc",
        beyond=None if query.next is None else decode_cursor(query.next),
    )
    following = None
    if page.next is not None:
        following = str(request.rel_url.update_query(next=encode_cursor(page.next)))
    results = [
        SpaceEvent(
            ts=format_ms(e.ts),
            kind=e.kind,
            dpu_id=e.dpu_id,
            seq=e.seq,
            doorway=e.doorway,
            direction=None if e.direction is None else (1 if e.direction > 0 else -1),
            delta=e.delta,
            count_after=e.count_after,
        )
        for e in page.events
    ]
    return answer(EventsAnswer(space_id=space_id, results=results, next=following))


@routes.post(
    "/spaces/{space_id}/resets",
    summary="Set a space's count at a moment (now by default); the live count follows at once",
    body=ResetBody,
    answer=ResetAnswer,
    status=201,
    errors=(400, 404, 409, 503),
)
async def make_reset(request: web.Request) -> web.StreamResponse:
    space_id = request.match_info["space_id"]
    request.app[HISTORY].topology.space(space_id)  # an unknown space is 404, whatever the body
    body = await parse_body(request, ResetBody)
    now = request.app.get(CLOCK, now_ms)()
    ts = now if body.ts is None else body.ts
    if ts - now > DEFAULT_MAX_SKEW_MS:
        raise error(
            web.HTTPBadRequest,
            f"ts: {format_ms(ts)} is {(ts - now) / 1000:.3f} s ahead of the server's clock"
            f" ({format_ms(now)}); a reset says what was counted, so give a time up to now"
            f" (at most {DEFAULT_MAX_SKEW_MS // 1000} s of clock skew is tolerated)",
        )
    taker = request.app.get(RESETS)
    if taker is None:
        raise error(web.HTTPServiceUnavailable, "this server takes no resets")
    try:
        stored = await taker.reset(Reset(space_id, ts, body.count, "api"))
    except ConflictError as e:
        raise error(web.HTTPConflict, f"ts: {e}") from None
    made = ResetAnswer(space_id=space_id, ts=format_ms(stored.ts), count=stored.count, kind="reset")
    return answer(made, status=201)


@routes.get(
    "/spaces/{space_id}/resets",
    summary="The manual and daily resets of a space in a window, oldest first",
    query=Window,
    answer=ResetsAnswer,
    errors=(400, 404),
)
async def space_resets(request: web.Request) -> web.StreamResponse:
    space_id = request.match_info["space_id"]
    space = request.app[HISTORY].topology.space(space_id)  # 404 first, whatever the query
    start, end = _window(parse_query(request, Window))
    if space.daily_reset is not None and end - start > MAX_DAILY_DAYS * 86_400_000:
        raise error(
            web.HTTPBadRequest,
            f"end_time: space {space_id!r} resets daily, so a window lists one reset a day:"
            f" give at most {MAX_DAILY_DAYS:,} days from start_time, and ask for the rest"
            " in more windows",
        )
    listed = await resets_between(request.app[HISTORY], space_id, start=start, end=end)
    results = [ListedReset(ts=format_ms(r.ts), count=r.count, kind=r.kind) for r in listed]
    return answer(ResetsAnswer(space_id=space_id, results=results))
