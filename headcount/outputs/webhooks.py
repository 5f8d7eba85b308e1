"""Capacity alerts POSTed to webhooks: signed, retried with backoff, never in counting's way.

Each webhook has its own bounded queue and worker: :meth:`Webhooks.notify` only appends (the
oldest waiting alert is dropped, and counted, when the queue is full), so a slow or dead
receiver delays nothing but its own alerts. A delivery is retried on a connection error, a
timeout or any answer but 2xx, after a backoff with full jitter, up to ``attempts`` times.
A receiver that fails is logged once when it starts failing and once when it recovers, not
at every attempt; every failed attempt is counted in ``headcount_webhook_failures``.

The body is the alert's JSON. ``X-Headcount-Timestamp`` is the time of the attempt in
seconds since the epoch, and ``X-Headcount-Signature`` is ``sha256=`` and the hex
HMAC-SHA256, keyed with the webhook's secret, of the timestamp, a ``.``, and the body: a
receiver recomputes it (:func:`verify`), compares in constant time, and refuses a timestamp
too far from its own clock, so a captured request cannot be replayed later.
``X-Headcount-Delivery`` is the same on every attempt of one alert (for de-duplication).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import random
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aiohttp

from headcount.clock import Clock, now_ms
from headcount.ingest.mqtt import Backoff
from headcount.metrics import Metrics
from headcount.outputs.alerts import Alert
from headcount.outputs.config import Webhook

__all__ = [
    "DELIVERY_HEADER",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "Retry",
    "Webhooks",
    "signature",
    "verify",
]

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Headcount-Signature"
TIMESTAMP_HEADER = "X-Headcount-Timestamp"
DELIVERY_HEADER = "X-Headcount-Delivery"

Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Retry:
    """How hard a delivery is tried: ``attempts`` in all, ``backoff`` between them, each
    attempt given ``timeout_s``; ``queue`` alerts wait per webhook at most."""

    attempts: int = 8
    backoff: Backoff = field(default_factory=lambda: Backoff(initial=1.0, maximum=300.0))
    timeout_s: float = 10.0
    queue: int = 1000

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.queue < 1 or not self.timeout_s > 0:
            raise ValueError(f"a retry policy needs attempts, queue >= 1 and a timeout: {self}")


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """``sha256=<hex HMAC-SHA256 of "{timestamp}.{body}" keyed with secret>``."""
    signed = timestamp.encode("ascii") + b"." + body
    return "sha256=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def verify(secret: str, timestamp: str, body: bytes, header: str) -> bool:
    """Whether ``header`` is the signature of ``body`` sent at ``timestamp``: what a
    receiver checks (and that the timestamp is recent)."""
    return hmac.compare_digest(signature(secret, timestamp, body), header)


@dataclass(frozen=True, slots=True)
class _Item:
    alert: Alert
    delivery: str


class _Sender:
    """One webhook's queue and worker."""

    def __init__(
        self,
        hook: Webhook,
        *,
        metrics: Metrics,
        retry: Retry,
        clock: Clock,
        sleep: Sleep,
        rng: random.Random,
    ) -> None:
        self.hook = hook
        self._metrics = metrics
        self._retry = retry
        self._clock = clock
        self._sleep = sleep
        self._rng = rng
        self._queue: deque[_Item] = deque()
        self._wake = asyncio.Event()
        self._failing = 0  # failed attempts since the receiver last accepted one
        parts = urlsplit(hook.url)
        port = f":{parts.port}" if parts.port else ""
        # Named without user, password or query: those may hold secrets.
        self._shown = f"{hook.name} ({parts.scheme}://{parts.hostname}{port}{parts.path})"

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def put(self, alert: Alert) -> None:
        if len(self._queue) >= self._retry.queue:
            self._queue.popleft()
            self._metrics.webhook_dropped.labels(self.hook.name, "queue_full").inc()
        self._queue.append(_Item(alert, uuid.uuid4().hex))
        self._wake.set()

    async def run(self, session: aiohttp.ClientSession) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                await self._deliver(session, self._queue.popleft())

    async def _deliver(self, session: aiohttp.ClientSession, item: _Item) -> None:
        body = item.alert.payload()
        delays = self._retry.backoff.delays(self._rng)
        for attempt in range(1, self._retry.attempts + 1):
            problem = await self._attempt(session, body, item.delivery)
            if problem is None:
                self._metrics.webhook_deliveries.labels(self.hook.name).inc()
                if self._failing:
                    log.info(
                        "webhook %s delivers again, after %d failed attempts",
                        self._shown,
                        self._failing,
                    )
                self._failing = 0
                return
            self._metrics.webhook_failures.labels(self.hook.name).inc()
            if not self._failing:
                log.warning(
                    "webhook %s fails: %s; retrying with backoff (logged again once it recovers)",
                    self._shown,
                    problem,
                )
            self._failing += 1
            if attempt < self._retry.attempts:
                await self._sleep(next(delays))
        self._metrics.webhook_dropped.labels(self.hook.name, "attempts").inc()
        log.debug("webhook %s: alert dropped after %d attempts", self._shown, attempt)

    async def _attempt(
        self, session: aiohttp.ClientSession, body: bytes, delivery: str
    ) -> str | None:
        """``None`` when the receiver accepted ``body``, else what went wrong."""
        timestamp = str(self._clock() // 1000)
        headers = {
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: signature(self.hook.secret, timestamp, body),
            DELIVERY_HEADER: delivery,
        }
        try:
            async with session.post(
                self.hook.url,
                data=body,
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=self._retry.timeout_s),
            ) as response:
                await response.read()
                if 200 <= response.status < 300:
                    return None
                return f"answer {response.status}"
        except (aiohttp.ClientError, TimeoutError) as e:
            return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


class Webhooks:
    """Every configured webhook; :meth:`notify` never waits, :meth:`run` delivers."""

    def __init__(
        self,
        hooks: Sequence[Webhook],
        *,
        metrics: Metrics,
        retry: Retry | None = None,
        clock: Clock = now_ms,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        rng = rng or random.Random()
        retry = retry or Retry()
        self._senders = [
            _Sender(hook, metrics=metrics, retry=retry, clock=clock, sleep=sleep, rng=rng)
            for hook in hooks
        ]

    def notify(self, alert: Alert) -> None:
        """Queue ``alert`` for each webhook that wants its space."""
        for sender in self._senders:
            if sender.hook.wants(alert.space_id):
                sender.put(alert)

    async def run(self) -> None:
        """Deliver until cancelled; what waits then is logged and dropped."""
        if not self._senders:
            return
        try:
            async with aiohttp.ClientSession() as session, asyncio.TaskGroup() as workers:
                for sender in self._senders:
                    workers.create_task(sender.run(session), name=f"webhook-{sender.hook.name}")
        finally:
            waiting = sum(sender.waiting for sender in self._senders)
            if waiting:
                log.warning("stopping with %d webhook alerts undelivered", waiting)
