"""The change feed: every change of a space's live state, pushed to whoever listens.

The actors :meth:`~ChangeFeed.publish` a :class:`Change` whenever a space's live count,
entrances or exits change (and at each manual and daily reset). Consumers (the WebSocket and
SSE push, MQTT state publishing, webhooks) each hold a :class:`Subscription`: a bounded queue.
Publishing never waits and never fails: a subscriber whose queue is full is closed with
``overflowed`` set, so a slow consumer loses its subscription, never the actors' time.

Coalesced by batch: an actor folds the events that arrived together (one group commit's worth
for its space) and then publishes one change, its live state after them all; so a change may
stand for several events (entrances and exits say how many), and the last change published
for a space always equals its live state. At low rates that is one change per event.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["Cause", "Change", "ChangeFeed", "Subscription", "SubscriptionClosed"]


class Cause(StrEnum):
    """Why a space's live state changed."""

    TRAVERSAL = "traversal"  # an event folded on top of the newest
    RESET = "reset"  # a manual reset (late or not)
    DAILY_RESET = "daily_reset"  # the space's daily reset instant passed
    #: A late event (refolded in memory or reloaded from the store), or the state an actor
    #: restarted with after a crash.
    CORRECTION = "correction"


@dataclass(frozen=True, slots=True)
class Change:
    """A space's live state right after a change: ``ts`` (ms) is the time of the newest event
    the state holds (the reset instant for a daily reset). ``cause`` of a change made of
    several events: ``correction`` if any was late, else ``reset`` if any was a reset."""

    space_id: str
    ts: int
    count: int
    entrances: int
    exits: int
    cause: Cause


class SubscriptionClosed(Exception):
    """The subscription ended: closed by its consumer, or ``overflowed`` (fell too far
    behind). ``reason`` says which, in words fit for a client."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class Subscription:
    """One consumer's bounded queue of changes. Read with :meth:`get` or ``async for`` (which
    ends quietly on :meth:`close`, and raises :class:`SubscriptionClosed` on overflow)."""

    def __init__(self, feed: ChangeFeed, space_ids: frozenset[str] | None, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.space_ids = space_ids
        self.maxsize = maxsize
        self.overflowed = False
        self._feed = feed
        self._items: deque[Change] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._closed: str | None = None

    @property
    def closed(self) -> bool:
        return self._closed is not None

    def qsize(self) -> int:
        return len(self._items)

    async def get(self) -> Change:
        """The next change; raises :class:`SubscriptionClosed` once closed (what was queued
        before a :meth:`close` is dropped: the consumer asked to stop)."""
        while not self._items:
            if self._closed is not None:
                raise SubscriptionClosed(self._closed)
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        return self._items.popleft()

    def get_nowait(self) -> Change | None:
        """The next change if one is queued (``None`` otherwise); raises
        :class:`SubscriptionClosed` once closed."""
        if self._closed is not None:
            raise SubscriptionClosed(self._closed)
        return self._items.popleft() if self._items else None

    def close(self, reason: str = "closed") -> None:
        """Stop receiving; a consumer waiting in :meth:`get` gets :class:`SubscriptionClosed`."""
        if self._closed is None:
            self._closed = reason
            self._items.clear()
            self._feed._forget(self)
            self._wake()

    def _put(self, change: Change) -> None:
        if len(self._items) >= self.maxsize:
            self.overflowed = True
            self.close(f"fell more than {self.maxsize} changes behind")
            return
        self._items.append(change)
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def __aiter__(self) -> AsyncIterator[Change]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Change]:
        while True:
            try:
                yield await self.get()
            except SubscriptionClosed:
                if self.overflowed:
                    raise
                return


class ChangeFeed:
    """Fans changes out to subscriptions, by space. Single event loop; no locks needed."""

    def __init__(self) -> None:
        self._everything: set[Subscription] = set()
        self._by_space: dict[str, set[Subscription]] = {}
        self.published = 0
        self.overflows = 0

    def subscribe(
        self, space_ids: Iterable[str] | None = None, *, maxsize: int = 1000
    ) -> Subscription:
        """A new subscription to the changes of ``space_ids`` (``None``: every space)."""
        ids = None if space_ids is None else frozenset(space_ids)
        subscription = Subscription(self, ids, maxsize)
        if ids is None:
            self._everything.add(subscription)
        else:
            for space_id in ids:
                self._by_space.setdefault(space_id, set()).add(subscription)
        return subscription

    def wants(self, space_id: str) -> bool:
        """Whether anyone listens to ``space_id``: the actors build no change otherwise."""
        return bool(self._everything) or space_id in self._by_space

    @property
    def subscribers(self) -> int:
        return len(self._everything) + len({s for subs in self._by_space.values() for s in subs})

    def publish(self, change: Change) -> None:
        """Queue ``change`` for every subscriber of its space. Never blocks, never raises: a
        subscriber whose queue is full is closed (``overflowed``)."""
        self.published += 1
        for subscription in tuple(self._everything):
            self._deliver(subscription, change)
        listeners = self._by_space.get(change.space_id)
        if listeners:
            for subscription in tuple(listeners):
                self._deliver(subscription, change)

    def _deliver(self, subscription: Subscription, change: Change) -> None:
        subscription._put(change)
        if subscription.overflowed:
            self.overflows += 1

    def _forget(self, subscription: Subscription) -> None:
        if subscription.space_ids is None:
            self._everything.discard(subscription)
            return
        for space_id in subscription.space_ids:
            listeners = self._by_space.get(space_id)
            if listeners is not None:
                listeners.discard(subscription)
                if not listeners:
                    del self._by_space[space_id]
