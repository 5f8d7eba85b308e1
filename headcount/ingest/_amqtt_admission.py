"""A fix for amqtt 0.12: a burst of new connections is let in 20 ms apart.

amqtt sets up each new connection (reads its CONNECT, builds its session and the session's
state machines, several milliseconds of CPU) as soon as it is accepted, and the loop runs every
connection accepted at once in one pass: 1,000 DPUs reconnecting together held the loop for
seconds (bench/connect_storm.py), and with it the service's HTTP API and ingest when the broker
runs inside the service. Once :func:`install` is called, each new connection first waits for
its turn, and turns are given ``TURN_INTERVAL_S`` apart: at most 50 set-ups a second, which
at 3 to 10 ms each leave most of the loop to whatever else is ready (an HTTP request, a
message to store). That rate costs a storm nothing: each new DPU's password
check (Argon2, ``_password_check``) takes far longer. A turn is not a lock: a client slow to
send its CONNECT holds nobody up. Like ``_amqtt_redelivery`` it reaches into amqtt, whose
version is pinned (<0.13); it affects only amqtt in this process.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from amqtt.broker import Broker

__all__ = ["TURN_INTERVAL_S", "Turns", "install"]

#: Seconds between two connections' turns.
TURN_INTERVAL_S = 0.02


class Turns:
    """Hands out turns to waiters in order, ``interval`` seconds apart."""

    def __init__(self, interval: float = TURN_INTERVAL_S) -> None:
        self._interval = interval
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._scheduled = False
        self._last = float("-inf")

    async def wait(self) -> None:
        """Return when it is the caller's turn."""
        turn = asyncio.get_running_loop().create_future()
        self._waiting.append(turn)
        self._schedule()
        await turn

    def _schedule(self) -> None:
        if self._waiting and not self._scheduled:
            self._scheduled = True
            loop = asyncio.get_running_loop()
            loop.call_at(max(loop.time(), self._last + self._interval), self._give)

    def _give(self) -> None:
        self._scheduled = False
        while self._waiting:
            turn = self._waiting.popleft()
            if not turn.done():  # a waiter cancelled meanwhile gives its turn on
                turn.set_result(None)
                self._last = asyncio.get_running_loop().time()
                break
        self._schedule()


_Connected = Callable[[Any, str, Any, Any], Awaitable[None]]


def _close(writer: Any) -> None:
    """Close a connection amqtt is done with. amqtt leaves it open when its handler is
    cancelled (the broker shutting down while the client is connected, or before its turn
    came); the socket would then stay open until garbage collection."""
    stream = getattr(writer, "_writer", None)  # amqtt's StreamWriterAdapter's stream
    if stream is not None and not stream.is_closing():
        stream.close()


def install() -> None:
    """Make every amqtt broker in this process set up new connections one at a time,
    ``TURN_INTERVAL_S`` apart."""
    original: _Connected = Broker._client_connected
    if getattr(original, "_paced", False):
        return

    async def paced(self: Broker, listener_name: str, reader: Any, writer: Any) -> None:
        turns = self.__dict__.setdefault("_headcount_turns", Turns())
        try:
            await turns.wait()
            await original(self, listener_name, reader, writer)
        finally:
            _close(writer)

    paced._paced = True  # type: ignore[attr-defined]
    Broker._client_connected = paced
