"""A fix for amqtt 0.12: a burst of new connections is let in one per event-loop pass.

amqtt sets up each new connection (reads its CONNECT, builds its session and the session's
state machines, several milliseconds of CPU) as soon as it is accepted, and the loop runs every
connection accepted at once in one pass: 1,000 DPUs reconnecting together held the loop for
seconds (bench/connect_storm.py), and with it the service's HTTP API and ingest when the broker
runs inside the service. Once :func:`install` is called, each new connection first waits for
its turn, and turns are given one per pass of the loop, so whatever else is ready (an HTTP
request, a message to store) runs between two set-ups. A turn is not a lock: a client slow to
send its CONNECT holds nobody up. Like ``_amqtt_redelivery`` it reaches into amqtt, whose
version is pinned (<0.13); it affects only amqtt in this process.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from amqtt.broker import Broker

__all__ = ["Turns", "install"]


class Turns:
    """Hands out turns to waiters in order, one per pass of the event loop."""

    def __init__(self) -> None:
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._scheduled = False

    async def wait(self) -> None:
        """Return when it is the caller's turn."""
        turn = asyncio.get_running_loop().create_future()
        self._waiting.append(turn)
        self._schedule()
        await turn

    def _schedule(self) -> None:
        if self._waiting and not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._give)

    def _give(self) -> None:
        self._scheduled = False
        while self._waiting:
            turn = self._waiting.popleft()
            if not turn.done():  # a waiter cancelled meanwhile gives its turn on
                turn.set_result(None)
                break
        self._schedule()


_Connected = Callable[[Any, str, Any, Any], Awaitable[None]]


def install() -> None:
    """Make every amqtt broker in this process set up new connections one per loop pass."""
    original: _Connected = Broker._client_connected
    if getattr(original, "_paced", False):
        return

    async def paced(self: Broker, listener_name: str, reader: Any, writer: Any) -> None:
        turns = self.__dict__.setdefault("_headcount_turns", Turns())
        await turns.wait()
        await original(self, listener_name, reader, writer)

    paced._paced = True  # type: ignore[attr-defined]
    Broker._client_connected = paced
