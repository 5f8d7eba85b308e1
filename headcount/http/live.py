"""Live push: every change of a space's live state, over a WebSocket (``/live``) or Server-Sent
Events (``/live/sse``), from the actors' change feed (:mod:`headcount.actors.changes`).

Both send the same JSON: first the current state of each space asked for (``cause``
``"state"``, ``ts`` the time it was read), then one message per change (``cause``
``traversal``, ``reset``, ``daily_reset`` or ``correction``, ``ts`` the time of the change).
Each client has a bounded queue; one that falls further behind is disconnected with a reason
(WebSocket close code 1013, an SSE ``closed`` event): the actors never wait for a client.

The token, when the API needs one, goes in the ``Authorization`` header of the request (the
WebSocket upgrade is a GET: read scope). No token in the query string: it would end up in the
logs of whatever proxy is in front.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import Iterable, Iterator
from functools import lru_cache
from typing import Any, Literal

from aiohttp import WSCloseCode, WSMsgType, web
from pydantic import Field

from headcount.actors import SpaceRecoveringError
from headcount.actors.changes import Change, ChangeFeed, Subscription, SubscriptionClosed
from headcount.clock import now_ms
from headcount.domain.timefmt import format_ms
from headcount.domain.topology import Topology
from headcount.http.api import Model, Query, Routes, parse_query
from headcount.http.errors import NOT_FOUND, error
from headcount.http.keys import ACTORS, CHANGES, CLOCK
from headcount.http.models import Stamp

__all__ = ["HEARTBEAT_S", "QUEUE", "LiveChange", "live_sse", "live_websocket", "routes", "setup"]

log = logging.getLogger(__name__)

#: Changes a client may fall behind by before it is disconnected.
QUEUE = 1000
#: WebSocket ping interval (a peer that does not answer is closed); SSE keep-alive interval.
HEARTBEAT_S = 20.0
#: The largest message a WebSocket client may send (a subscription to many spaces fits).
MAX_MESSAGE = 1 << 20


class _Open(set[web.WebSocketResponse | Subscription]):
    """The pushes under way (a WebSocket, an SSE stream's subscription), to end when the
    application shuts down."""


_OPEN = web.AppKey("live_clients", _Open)
_HOW = 'send {"subscribe": ["A", "B"]} (space ids) or {"subscribe": "*"} (every space)'


#: The live push's routes.
routes = Routes()


class LiveChange(Model):
    """One message of the live push (a WebSocket text message, an SSE ``data:`` line): a
    space's live state, first as it is when the client subscribes, then after each change.
    Built as a dict on the hot path; tests/http/test_live.py holds real messages to it."""

    space_id: str
    ts: Stamp = Field(
        description="For `state`, when it was read; else the time of the newest event the state"
        " holds (the reset instant for `daily_reset`)."
    )
    count: int
    entrances: int
    exits: int
    cause: Literal["state", "traversal", "reset", "daily_reset", "correction"] = Field(
        description="`state`: the current state, sent first; `traversal`: events folded on"
        " top; `reset`: a manual reset; `daily_reset`: the space's daily reset time passed;"
        " `correction`: a late event changed the live state. Events that reach a space"
        " together make one message; the last one for a space is its live state."
    )


class LiveQuery(Query):
    """``?space_id=A&space_id=B``: the spaces to follow."""

    space_id: list[str] = Field(
        default_factory=list,
        description="A space to follow (repeat for several); without it, every space.",
    )


def setup(app: web.Application) -> None:
    """What the live routes need of ``app``: the open clients, closed when it shuts down
    (a push stream never ends on its own)."""
    app[_OPEN] = _Open()
    app.on_shutdown.append(_close_all)


async def _close_all(app: web.Application) -> None:
    opened: _Open = app[_OPEN]
    for push in tuple(opened):
        if isinstance(push, web.WebSocketResponse):
            await push.close(code=WSCloseCode.GOING_AWAY, message=b"server stopping")
        else:
            push.close("server stopping")  # the stream ends


@lru_cache(maxsize=4096)
def encoded(change: Change) -> str:
    """A change as the JSON text sent: encoded once however many clients receive it."""
    return json.dumps(
        {
            "space_id": change.space_id,
            "ts": format_ms(change.ts),
            "count": change.count,
            "entrances": change.entrances,
            "exits": change.exits,
            "cause": str(change.cause),
        }
    )


def _states(request: web.Request, space_ids: Iterable[str]) -> list[dict[str, Any]]:
    """The current state of each space, as ``cause: "state"`` messages; a space that cannot
    answer yet (still recovering, or served by another shard) gets an ``error`` message."""
    actors, now = request.app[ACTORS], request.app.get(CLOCK, now_ms)()
    out: list[dict[str, Any]] = []
    for space_id in space_ids:
        try:
            state = actors.live_state(space_id)
        except SpaceRecoveringError as e:
            out.append({"error": str(e), "space_id": space_id})
            continue
        if state is None:
            out.append({"error": "this service does not serve the space", "space_id": space_id})
            continue
        out.append(
            {
                "space_id": space_id,
                "ts": format_ms(now),
                "count": state.count,
                "entrances": state.entrances,
                "exits": state.exits,
                "cause": "state",
            }
        )
    return out


def _unknown(topology: Topology, space_ids: Iterable[str]) -> list[str]:
    return [s for s in space_ids if s not in topology.spaces]


# -- WebSocket -----------------------------------------------------------------------------


@routes.websocket(
    "/live",
    summary='Live counts pushed over a WebSocket. Send `{"subscribe": ["A", "B"]}` or'
    ' `{"subscribe": "*"}` (again to change the set); receive `{"subscribed": ...}`, the'
    " current state of each space, then every change, each a `LiveChange` as JSON text. A bad"
    ' message gets `{"error": "..."}`, the socket stays open. A client more than 1,000'
    " changes behind is closed with code 1013.",
)
async def live_websocket(request: web.Request) -> web.StreamResponse:
    """``GET /live``: the WebSocket. See the module's documentation for the messages."""
    # No per-message deflate: a change is ~120 bytes, and compressing it for each client
    # would cost more than sending it.
    ws = web.WebSocketResponse(heartbeat=HEARTBEAT_S, max_msg_size=MAX_MESSAGE, compress=False)
    await ws.prepare(request)
    request.app[_OPEN].add(ws)
    client = _Client(request, ws)
    try:
        async for message in ws:
            if message.type is WSMsgType.TEXT:
                await client.received(message.data)
            elif message.type is WSMsgType.BINARY:
                await client.send({"error": f"messages are JSON text: {_HOW}"})
    except ConnectionError:  # the client went away while we wrote to it: nothing to log
        pass
    finally:
        request.app[_OPEN].discard(ws)
        await client.stop()
    return ws


class _Client:
    """One WebSocket client: its subscription and the task that pushes its changes."""

    def __init__(self, request: web.Request, ws: web.WebSocketResponse) -> None:
        self.request = request
        self.ws = ws
        self.feed: ChangeFeed = request.app[CHANGES]
        self.subscription: Subscription | None = None
        self.pusher: asyncio.Task[None] | None = None
        self._sending = asyncio.Lock()

    async def send(self, message: dict[str, Any] | str) -> None:
        text = message if isinstance(message, str) else json.dumps(message)
        async with self._sending:
            await self.ws.send_str(text)

    async def received(self, data: str) -> None:
        """A message from the client: a new set of spaces, or an error message back."""
        try:
            wanted = _subscription(json.loads(data))
        except (ValueError, TypeError) as e:  # json.JSONDecodeError is a ValueError
            await self.send({"error": f"{e}: {_HOW}"})
            return
        except RecursionError:
            await self.send({"error": f"the message nests too deep: {_HOW}"})
            return
        topology = self.request.app[ACTORS].topology
        unknown = _unknown(topology, wanted or ())
        if unknown:
            shown = ", ".join(repr(s) for s in unknown[:10])
            await self.send(
                {"error": f"no such space: {shown}; the subscription is unchanged",
                 "unknown": unknown[:10]}
            )  # fmt: skip
            return
        await self.stop()
        self.subscription = self.feed.subscribe(wanted, maxsize=QUEUE)
        states = _states(self.request, topology.spaces if wanted is None else wanted)
        await self.send({"subscribed": "*" if wanted is None else wanted})
        for state in states:
            await self.send(state)
        self.pusher = asyncio.create_task(self._push(self.subscription), name="live-push")

    async def _push(self, subscription: Subscription) -> None:
        try:
            while True:
                change: Change | None = await subscription.get()
                async with self._sending:  # what queued meanwhile goes out in one turn
                    with _corked(self.request, more=subscription.qsize() > 0):
                        while change is not None:
                            await self.ws.send_str(encoded(change))
                            change = subscription.get_nowait()
        except SubscriptionClosed as e:
            if subscription.overflowed:
                await self.ws.close(
                    code=WSCloseCode.TRY_AGAIN_LATER, message=f"{e.reason}; reconnect".encode()
                )
        except ConnectionError:
            subscription.close()

    async def stop(self) -> None:
        if self.subscription is not None:
            self.subscription.close()
        if self.pusher is not None:
            self.pusher.cancel()
            await asyncio.wait([self.pusher])
        self.subscription = self.pusher = None


_CORK = getattr(socket, "TCP_CORK", None)  # Linux's


@contextlib.contextmanager
def _corked(request: web.Request, *, more: bool) -> Iterator[None]:
    """While several frames go to one client, let its TCP connection hold them (Linux's
    ``TCP_CORK``) and send them as one segment when done, not one each: aiohttp writes each
    frame to the connection as it is sent, and every segment costs the connection's stack,
    and the client, a delivery of its own. One frame, or no ``TCP_CORK``: nothing done."""
    transport = request.transport
    sock = (
        None
        if not more or _CORK is None or transport is None
        else transport.get_extra_info("socket")
    )
    if sock is None:
        yield
        return
    with contextlib.suppress(OSError):  # a connection closing meanwhile
        sock.setsockopt(socket.IPPROTO_TCP, _CORK, 1)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, _CORK, 0)  # what it holds goes out now


def _subscription(message: object) -> list[str] | None:
    """The spaces a ``{"subscribe": ...}`` message asks for (``None``: every space)."""
    if not isinstance(message, dict) or set(message) != {"subscribe"}:
        raise ValueError("a message is an object with one key, 'subscribe'")
    wanted = message["subscribe"]
    if wanted == "*":
        return None
    if not isinstance(wanted, list) or not all(isinstance(s, str) for s in wanted):
        raise TypeError("'subscribe' is a list of space ids or \"*\"")
    return list(dict.fromkeys(wanted))


# -- Server-Sent Events --------------------------------------------------------------------


@routes.get(
    "/live/sse",
    summary="Live counts pushed as Server-Sent Events: the current state of each space, then"
    " every change, one `data:` line (a `LiveChange`) each; a comment line every 20 s. A"
    " client more than 1,000 changes behind gets `event: closed` and the stream ends.",
    query=LiveQuery,
    answer=LiveChange,
    errors=(404,),
    content_type="text/event-stream",
    description="A stream of events, each `data: ` and a `LiveChange` as JSON.",
)
async def live_sse(request: web.Request) -> web.StreamResponse:
    """``GET /live/sse?space_id=A&space_id=B`` (every space without ``space_id``): the same
    messages as Server-Sent Events, one ``data:`` line each; a comment every
    :data:`HEARTBEAT_S` seconds keeps the connection open through proxies."""
    topology = request.app[ACTORS].topology
    asked = list(dict.fromkeys(parse_query(request, LiveQuery).space_id))
    if any(not s for s in asked):
        raise error(web.HTTPBadRequest, "space_id: a space id, not empty (repeat for several)")
    if _unknown(topology, asked):
        raise error(web.HTTPNotFound, NOT_FOUND)
    if request.method == "HEAD":  # the headers alone: a stream has no end to wait for
        return web.Response(content_type="text/event-stream")
    wanted = asked or None
    subscription = request.app[CHANGES].subscribe(wanted, maxsize=QUEUE)
    try:
        states = _states(request, topology.spaces if wanted is None else wanted)
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        request.app[_OPEN].add(subscription)
        await _stream(response, states, subscription)
        return response
    finally:
        request.app[_OPEN].discard(subscription)
        subscription.close()


async def _stream(
    response: web.StreamResponse, states: list[dict[str, Any]], subscription: Subscription
) -> None:
    try:
        for state in states:
            await response.write(_event(json.dumps(state)))
        while True:
            try:
                change = await asyncio.wait_for(subscription.get(), HEARTBEAT_S)
            except TimeoutError:
                await response.write(b": keep-alive\n\n")
                continue
            await response.write(_event(encoded(change)))
    except SubscriptionClosed as e:
        if subscription.overflowed:
            closed = json.dumps({"error": f"{e.reason}; reconnect"})
            await response.write(f"event: closed\ndata: {closed}\n\n".encode())
    except (ConnectionError, RuntimeError):  # the client went away mid-write
        return
    with contextlib.suppress(ConnectionError, RuntimeError):
        await response.write_eof()


def _event(data: str) -> bytes:
    return f"data: {data}\n\n".encode()
