"""Ingest without a broker: what a broker would deliver to it, and what it acknowledged."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Msg:
    """A received message as ingest sees it (``pipeline.Message``)."""

    topic: str
    payload: bytes


class Inbox:
    """Messages for an ``Ingest`` under test, delivered in the order put, and the ones it
    acknowledged, in order. ``check`` runs on each acknowledgement before it is recorded (to
    look at the store at the moment of the ack)."""

    def __init__(self, check: Callable[[Msg], Awaitable[None]] | None = None) -> None:
        self._queue: asyncio.Queue[Msg] = asyncio.Queue()
        self._check = check
        self.acked: list[Msg] = []

    def put(self, *messages: Msg) -> None:
        for message in messages:
            self._queue.put_nowait(message)

    async def messages(self) -> AsyncIterator[Msg]:
        """Every message put, now and later; never ends, as a broker connection does not."""
        while True:
            yield await self._queue.get()

    async def ack(self, message: Msg) -> None:
        if self._check is not None:
            await self._check(message)
        self.acked.append(message)
