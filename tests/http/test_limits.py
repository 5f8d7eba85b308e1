"""The API's limits on a real socket: too large is a clear 4xx, too slow is disconnected, and
others are served meanwhile."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import ClientSession, web

from headcount.eventstore.store import EventStore
from headcount.http.limits import Limits, new_app
from headcount.http.routes import add_routes
from headcount.http.server import make_runner
from tests.http.test_routes import service_app
from tests.http.test_server import send

#: Short enough for a test, long enough that a healthy client is never cut off.
IDLE_S = 1.0
LIMITS = Limits(body_bytes=1000, idle_timeout_s=IDLE_S)


async def echo_length(request: web.Request) -> web.Response:
    """A route that reads its body, as the API's POST routes will."""
    return web.json_response({"read": len(await request.read())})


def limited_app(store: EventStore) -> web.Application:
    """The API (seed topology) in an application made with ``LIMITS``, and a POST route."""
    app = new_app(LIMITS)
    app.cleanup_ctx.extend(service_app(store).cleanup_ctx)
    add_routes(app)
    app.router.add_post("/test-body", echo_length)
    return app


@pytest.fixture
async def port(store: EventStore) -> AsyncIterator[int]:
    runner = make_runner(limited_app(store), handle_signals=False, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


def post(body: bytes) -> bytes:
    head = (
        f"POST /test-body HTTP/1.1\r\nHost: h\r\nConnection: close\r\nContent-Length: {len(body)}"
    )
    return head.encode() + b"\r\n\r\n" + body


async def test_a_body_within_the_limit_is_read_one_over_is_a_json_413(port: int) -> None:
    ok = await send(port, post(b"x" * 1000))
    assert ok.status == 200
    assert ok.json() == {"read": 1000}
    refused = await send(port, post(b"x" * 1001))
    assert refused.status == 413
    assert refused.json() == {
        "detail": "The request body is too large: this server reads up to 1,000 bytes."
    }


def get(path: str, *headers: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: h", "Connection: close", *headers, "", ""]
    return "\r\n".join(lines).encode()


async def test_headers_up_to_the_limit_are_read_one_more_is_a_json_400(port: int) -> None:
    own = 2  # Host and Connection
    fits = [f"X-{i}: y" for i in range(LIMITS.headers - own)]
    assert (await send(port, get("/healthz", *fits))).status == 200
    refused = await send(port, get("/healthz", *fits, "X-last: y"))
    assert refused.status == 400
    assert refused.json() == {
        "detail": f"The request has too many headers: this server reads up to {LIMITS.headers}."
    }


async def test_a_header_over_its_size_is_a_json_400_naming_the_limit(port: int) -> None:
    fits = await send(port, get("/healthz", "X-Big: " + "y" * LIMITS.header_bytes))
    assert fits.status == 200
    refused = await send(port, get("/healthz", "X-Big: " + "y" * (LIMITS.header_bytes + 1)))
    assert refused.status == 400
    assert "headers of up to 8,190 bytes" in refused.json()["detail"]


async def test_query_parameters_up_to_the_limit_are_read_one_more_is_a_json_400(
    port: int,
) -> None:
    fits = "&".join(f"p{i}=1" for i in range(LIMITS.query_params))
    assert (await send(port, get(f"/spaces?{fits}"))).status == 200
    refused = await send(port, get(f"/spaces?{fits}&one=more"))
    assert refused.status == 400
    assert refused.json() == {
        "detail": f"The query has {LIMITS.query_params + 1} parameters; this server reads at"
        f" most {LIMITS.query_params}."
    }


async def idle_until_closed(port: int, dribble: bytes) -> tuple[float, int]:
    """Connect, send ``dribble`` a byte every 0.1 s (then nothing) until the server closes
    the connection; the seconds that took and how many bytes were sent by then."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    closed = asyncio.create_task(reader.read())
    sent = 0
    try:
        for byte in dribble:
            if closed.done():
                break
            writer.write(bytes([byte]))
            sent += 1
            await asyncio.sleep(0.1)
        async with asyncio.timeout(IDLE_S * 10):
            assert await closed == b""  # closed, with no answer
        return time.monotonic() - started, sent
    finally:
        writer.close()


@pytest.mark.parametrize(
    "dribble",
    [
        pytest.param(b"", id="idle"),
        pytest.param(b"GET /spaces HTTP/1.1\r\nHost: h\r\nX-Slow: " + b"y" * 30, id="slow-headers"),
    ],
)
async def test_a_slow_client_is_disconnected_while_others_are_served(
    port: int, dribble: bytes
) -> None:
    """A client that sends no complete request within the idle timeout is closed by the
    protocol's own timer, even while it is still sending; a client beside it gets its
    answers throughout."""
    assert len(dribble) * 0.1 > 2 * IDLE_S or not dribble  # still sending when cut off
    slow = asyncio.create_task(idle_until_closed(port, dribble))
    answered = 0
    async with ClientSession(f"http://127.0.0.1:{port}") as session:
        while not slow.done():
            async with session.get("/spaces") as response:
                assert response.status == 200
                answered += 1
            await asyncio.sleep(0.05)
    took, sent = await slow
    assert took >= IDLE_S * 0.9  # not before the timeout
    if dribble:  # cut off by the timer while still sending, not once it went quiet
        assert sent < len(dribble)
    assert answered >= 3
