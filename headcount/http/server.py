"""The runner that serves the API, so that the errors aiohttp answers itself are JSON too.

aiohttp reads the request line and headers in its protocol, before the application and its
middlewares: a request it cannot read (a URL or a header over 8,190 bytes, a garbled request
line, a malformed header) is answered there, as ``text/plain`` echoing the offending bytes, and
logged at ERROR with a traceback, once per request (a log flood anyone can cause). No
middleware, signal or documented option reaches that answer (aio-libs/aiohttp#3287, open).
The same method answers a crash that escapes the application's handler.

So :func:`make_runner` serves the application with a protocol whose ``handle_error`` answers
:mod:`headcount.http.errors`' ``{"detail": "..."}``, logs a request it cannot read at DEBUG
in one line without a traceback, and a crash at ERROR once with its traceback (never in the
body). Each connection also remembers the token that last let a request in (``verified``),
so that the requests after it on the connection skip hashing it (:mod:`headcount.http.auth`).
Everything else is aiohttp's own ``AppRunner``.

aiohttp API this relies on beyond the documented (checked on aiohttp 3.14.5; the raw-socket
tests in tests/http/test_server.py fail if any of it changes): ``RequestHandler.handle_error
(request, status, exc, message)``, the method the protocol calls for every error answer;
``AppRunner._make_server``, the runner's step that builds the ``web.Server`` (whose class is
then swapped for a subclass that only overrides ``__call__``, the protocol factory); and the
``Server`` attributes ``_loop`` and ``_kwargs``, which ``Server.__call__`` passes to each
connection's ``RequestHandler``.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.web_request import BaseRequest

from headcount.http.errors import INTERNAL
from headcount.http.limits import LIMITS, Limits
from headcount.http.tokens import Token

log = logging.getLogger(__name__)

#: The ``detail`` of a request whose request line or headers cannot be parsed.
#: aiohttp's message (both parsers) for a request with more headers than ``max_headers``.
_TOO_MANY_HEADERS = "Too many headers received"
UNREADABLE = "The request cannot be read as HTTP: its request line or headers are malformed."


def verified(request: web.BaseRequest) -> tuple[bytes, Token] | None:
    """What the request's connection remembers of the token that last let a request in
    (``None``: nothing, or a connection not served by :func:`make_runner`)."""
    protocol = request.protocol
    return protocol.verified if isinstance(protocol, _Protocol) else None


def remember(request: web.BaseRequest, presented: bytes, token: Token) -> None:
    """Have the request's connection remember that ``presented`` is ``token``."""
    protocol = request.protocol
    if isinstance(protocol, _Protocol):
        protocol.verified = (presented, token)


def make_runner(app: web.Application, **kwargs: Any) -> web.AppRunner:
    """A runner for ``app`` (``kwargs`` as for ``web.AppRunner``) whose every error answer,
    including those aiohttp gives before the application sees the request, is JSON, and whose
    connections keep the application's :class:`~headcount.http.limits.Limits` (the defaults
    when it has none): request line, header sizes and count, and the idle timeout."""
    limits = app.get(LIMITS) or Limits()
    return _Runner(app, **{**limits.protocol(), **kwargs})


class _Runner(web.AppRunner):
    __slots__ = ()

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _Server  # the same server, making _Protocol connections
        return server


class _Server(web.Server):
    def __call__(self) -> web.RequestHandler:
        return _Protocol(self, loop=self._loop, **self._kwargs)


class _Protocol(web.RequestHandler):
    __slots__ = ("verified",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: The ``Authorization`` token that last matched a token on this connection, as
        #: bytes, with that token (see ``headcount.http.auth.check_token``).
        self.verified: tuple[bytes, Token] | None = None

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """The JSON answer to a request the protocol could not read or whose handler failed.
        ``message`` is aiohttp's text for the client, which echoes the request: not used."""
        if request.writer.output_size > 0:  # as aiohttp: a response is half sent already
            raise ConnectionError("cannot send an error answer after part of a response")
        if status >= 500:
            log.error("%s %s failed", request.method, request.path_qs, exc_info=exc)
            detail = INTERNAL if status == 500 else f"{HTTPStatus(status).phrase}."
        else:
            detail = self._detail(exc, status)
            log.debug("refused a request from %s: %s (%s)", request.remote, detail, _brief(exc))
        response = web.json_response({"detail": detail}, status=status)
        response.force_close()  # the connection's state is unknown after a parser error
        return response

    def _detail(self, exc: BaseException | None, status: int) -> str:
        if isinstance(exc, LineTooLong):
            return (
                "The request line or a header is too long: this server reads request lines of"
                f" up to {self.max_line_size:,} bytes and headers of up to"
                f" {self.max_field_size:,} bytes."
            )
        if isinstance(exc, HttpProcessingError) and exc.message == _TOO_MANY_HEADERS:
            return f"The request has too many headers: this server reads up to {self.max_headers}."
        if isinstance(exc, HttpProcessingError):
            return UNREADABLE
        return f"{HTTPStatus(status).phrase}."


def _brief(exc: BaseException | None, limit: int = 120) -> str:
    """``exc`` on one short line, for the log: its type and the start of its message."""
    if exc is None:
        return "no exception"
    text = exc.message if isinstance(exc, HttpProcessingError) else str(exc)
    text = " ".join(str(text).split())
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
