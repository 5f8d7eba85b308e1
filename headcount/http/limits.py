"""How much the API reads from a client, and how long it waits for one.

Each limit is aiohttp's own setting, given in one place (:class:`Limits`): the body size is the
application's ``client_max_size`` (413 past it, when a handler reads the body); the request
line, each header and the number of headers are the protocol's ``max_line_size``,
``max_field_size`` and ``max_headers`` (400, answered by :mod:`headcount.http.server`); a
connection that sends no complete request within ``keepalive_timeout`` seconds, whether idle
or sending its headers a byte at a time, is closed by the protocol's own timer. aiohttp has
no limit on the number of query parameters, so :func:`check_query` counts them (400).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from headcount.http.errors import JSON

__all__ = ["LIMITS", "Limits", "check_query", "new_app"]


@dataclass(frozen=True, slots=True)
class Limits:
    """The API's limits on what a client sends and how slowly."""

    #: Request body, bytes (the API's bodies are small JSON documents).
    body_bytes: int = 64 * 1024
    #: Request line (method, path and query), bytes.
    line_bytes: int = 8190
    #: One header (name and value), bytes.
    header_bytes: int = 8190
    #: Headers in a request.
    headers: int = 64
    #: Query parameters in a request.
    query_params: int = 16
    #: Seconds a connection may take to send a complete request (first, or next one on a
    #: kept-alive connection) before it is closed.
    idle_timeout_s: float = 30.0

    def protocol(self) -> dict[str, Any]:
        """The keyword arguments of aiohttp's ``web.RequestHandler`` these limits set."""
        return {
            "max_line_size": self.line_bytes,
            "max_field_size": self.header_bytes,
            "max_headers": self.headers,
            "keepalive_timeout": self.idle_timeout_s,
        }


LIMITS = web.AppKey("limits", Limits)


def new_app(limits: Limits | None = None) -> web.Application:
    """An application that reads bodies up to ``limits.body_bytes`` and keeps ``limits`` for
    :func:`check_query` and ``headcount.http.server.make_runner``."""
    limits = limits or Limits()
    app = web.Application(client_max_size=limits.body_bytes)
    app[LIMITS] = limits
    return app


def check_query(request: web.Request) -> None:
    """Raise 400 for a query with more parameters than the application's limit. Run by the
    API's one middleware (:func:`headcount.http.errors.guard`)."""
    if request.query_string:
        limit = request.app.get(LIMITS, _DEFAULT).query_params
        given = len(request.query)
        if given > limit:
            detail = f"The query has {given} parameters; this server reads at most {limit}."
            raise web.HTTPBadRequest(text=json.dumps({"detail": detail}), content_type=JSON)


_DEFAULT = Limits()
