"""The runner the service serves with: raw requests on a real socket, every error answer JSON.

aiohttp answers requests it cannot read before any middleware runs, so these tests talk to a
real server started with :func:`headcount.http.server.make_runner`, not the test client.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web

from headcount.eventstore.store import EventStore
from headcount.http.errors import INTERNAL
from headcount.http.openapi import document
from headcount.http.server import UNREADABLE, make_runner
from tests.http.test_openapi import problems, response_schema
from tests.http.test_routes import service_app

TOO_LONG = (
    "The request line or a header is too long: this server reads request lines of up to 8,190"
    " bytes and headers of up to 8,190 bytes."
)


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        assert self.headers["content-type"] == "application/json; charset=utf-8"
        return json.loads(self.body)


async def _serve(app: web.Application) -> AsyncIterator[int]:
    runner = make_runner(app, handle_signals=False, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def send(port: int, request: bytes) -> Answer:
    """Write ``request`` as is and read the answer until the server closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Answer(int(status_line.split()[1]), headers, body)


@pytest.fixture
async def api(store: EventStore) -> AsyncIterator[int]:
    """The API over the seed topology on a free port; yields the port."""
    async for port in _serve(service_app(store)):
        yield port


def no_errors_logged(caplog: pytest.LogCaptureFixture) -> None:
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert loud == [], [r.getMessage()[:200] for r in loud]


async def test_a_url_too_long_is_a_json_400_without_the_url_nor_an_error_logged(
    api: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    url = "/spaces/" + "x" * 9_000
    answer = await send(api, f"GET {url} HTTP/1.1\r\nHost: headcount\r\n\r\n".encode())
    assert answer.status == 400
    assert answer.headers["content-type"] == "application/json; charset=utf-8"
    assert answer.json() == {"detail": TOO_LONG}
    assert b"xxxx" not in answer.body
    doc = document()
    assert problems(doc, response_schema(doc, "/spaces/{space_id}", 400), answer.json()) == []
    no_errors_logged(caplog)
    [record] = [r for r in caplog.records if r.name == "headcount.http.server"]
    assert record.levelno == logging.DEBUG
    assert "\n" not in record.getMessage()
    assert len(record.getMessage()) < 400


@pytest.mark.parametrize(
    ("request_bytes", "detail"),
    [
        pytest.param(
            b"GET /healthz HTTP/1.1\r\nHost: h\r\nX-Long: " + b"y" * 9_000 + b"\r\n\r\n",
            TOO_LONG,
            id="header-too-long",
        ),
        pytest.param(
            b"GET /healthz HTTP/1.1\r\nHost: h\r\nno colon here\r\n\r\n",
            UNREADABLE,
            id="malformed-header",
        ),
        pytest.param(
            b"GET /healthz HTTP/1.1\r\n"
            + b"".join(b"X-%d: y\r\n" % i for i in range(200))
            + b"\r\n",
            "The request has too many headers: this server reads up to 64.",
            id="too-many-headers",
        ),
        pytest.param(b"JRMI\r\n\r\n", UNREADABLE, id="not-http"),
        pytest.param(b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03", UNREADABLE, id="tls"),
    ],
)
async def test_requests_aiohttp_cannot_read_get_json_400s(
    api: int, caplog: pytest.LogCaptureFixture, request_bytes: bytes, detail: str
) -> None:
    caplog.set_level(logging.DEBUG)
    answer = await send(api, request_bytes)
    assert answer.status == 400
    assert answer.json() == {"detail": detail}
    assert b"yyyy" not in answer.body
    no_errors_logged(caplog)


@pytest.mark.parametrize(
    ("request_line", "status", "body"),
    [
        ("GET /nowhere HTTP/1.1", 404, {"detail": "Not found."}),
        (
            "DELETE /spaces HTTP/1.1",
            405,
            {"detail": "Method DELETE is not allowed here; allowed: GET, HEAD."},
        ),
    ],
)
async def test_router_errors_are_json_on_the_real_server(
    api: int, caplog: pytest.LogCaptureFixture, request_line: str, status: int, body: Any
) -> None:
    caplog.set_level(logging.DEBUG)
    answer = await send(api, f"{request_line}\r\nHost: h\r\nConnection: close\r\n\r\n".encode())
    assert answer.status == status
    assert answer.json() == body
    no_errors_logged(caplog)


async def test_a_crash_past_the_middleware_is_a_json_500_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Without the API's middleware (a crash outside it reaches the protocol the same way):
    the 500 is JSON without the traceback, which is logged once, at ERROR."""

    async def crash(request: web.Request) -> web.Response:
        raise RuntimeError("secret connection string")

    app = web.Application()
    app.router.add_get("/crash", crash)
    caplog.set_level(logging.DEBUG)
    async for port in _serve(app):
        answer = await send(port, b"GET /crash HTTP/1.1\r\nHost: h\r\n\r\n")
    assert answer.status == 500
    assert answer.json() == {"detail": INTERNAL}
    assert b"secret" not in answer.body
    assert b"Traceback" not in answer.body
    [record] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert record.levelno == logging.ERROR
    assert record.name == "headcount.http.server"
    assert record.getMessage() == "GET /crash failed"
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], RuntimeError)
