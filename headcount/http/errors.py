"""Every error the API answers is JSON ``{"detail": "..."}``: the ones handlers raise, the
router's 404 and 405, domain errors, a store that is down (503: past counts need it, live
counts do not), and crashes (logged, never shown).

:func:`guard` makes the one middleware the API runs: the checks every request passes (the
query limit, the token) and then the handler, every error made JSON. One middleware rather than
one per check: each is a coroutine around every request, a cost bench/live_query.py sees.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from headcount.errors import (
    InvalidTimestampError,
    StoreDataError,
    StoreError,
    UnknownSpaceError,
)

log = logging.getLogger(__name__)

NOT_FOUND = "Not found."
INTERNAL = "Internal server error; it has been logged."
STORE_DOWN = (
    "The event store is unavailable, so this answer (a count at a past ts, or of a space"
    " another shard serves) cannot be given now; live counts still answer. Try again shortly."
)
#: Seconds a client is asked to wait before asking again while the store is down.
RETRY_AFTER_S = 5
JSON = "application/json"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: A check every request passes before its handler: it returns to let the request in, or
#: raises an HTTP error (JSON) to refuse it.
Check = Callable[[web.Request], None]


def error(kind: type[web.HTTPException], detail: str) -> web.HTTPException:
    """An HTTP error of ``kind`` whose body is ``{"detail": detail}``, ready to raise."""
    return kind(text=json.dumps({"detail": detail}), content_type=JSON)


def guard(*checks: Check) -> Middleware:
    """A middleware that runs ``checks`` in order, then the handler, and gives every error
    response the JSON error body, translating domain errors to statuses (as :func:`json_errors`,
    which is ``guard()``)."""

    @web.middleware
    async def guarded(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            for check in checks:
                check(request)
            return await handler(request)
        except Exception as e:
            return _answer(request, e)

    return guarded


#: Every error response the JSON error body; domain errors translated to statuses.
json_errors = guard()


def _answer(request: web.Request, e: Exception) -> web.StreamResponse:
    """The JSON answer to ``e``, raised or returned (called in the ``except`` that caught it)."""
    if isinstance(e, web.HTTPException):
        if e.status < 400 or e.content_type == JSON:
            raise e
        return _as_json(request, e)
    if isinstance(e, UnknownSpaceError):
        raise error(web.HTTPNotFound, NOT_FOUND) from None
    if isinstance(e, InvalidTimestampError):
        raise error(web.HTTPBadRequest, str(e)) from None
    if isinstance(e, StoreDataError):  # the store refused what we read: our bug
        log.exception("%s %s failed", request.method, request.path_qs)
        raise error(web.HTTPInternalServerError, INTERNAL) from None
    if isinstance(e, StoreError):
        # The driver's text names hosts and ports: for the log, not for the client.
        log.warning("%s %s: %s", request.method, request.path_qs, e)
        unavailable = error(web.HTTPServiceUnavailable, STORE_DOWN)
        unavailable.headers["Retry-After"] = str(RETRY_AFTER_S)
        raise unavailable from None
    log.exception("%s %s failed", request.method, request.path_qs)
    raise error(web.HTTPInternalServerError, INTERNAL) from None


def _as_json(request: web.Request, e: web.HTTPException) -> web.Response:
    """The JSON version of an error aiohttp raised itself (no route, wrong method, ...)."""
    if e.status == 404:
        detail = NOT_FOUND
    elif e.status == 405:
        allowed = ", ".join(sorted(e.headers.get("Allow", "").split(",")))
        detail = f"Method {request.method} is not allowed here; allowed: {allowed}."
    elif e.status == 413:
        limit = request.client_max_size
        detail = f"The request body is too large: this server reads up to {limit:,} bytes."
    else:
        detail = f"{e.reason}."
    headers = {"Allow": e.headers["Allow"]} if "Allow" in e.headers else None
    return web.json_response({"detail": detail}, status=e.status, headers=headers)
