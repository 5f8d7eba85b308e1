"""From MQTT messages to stored, routed events: decode, screen, group commit, route, ack.

A message is acknowledged to the broker only after its events (or its quarantine record) are
committed, so a crash at any instant loses nothing the broker accepted: it redelivers what was
not acknowledged, and the store's unique key drops the repeats.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterable, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from headcount.actors import ActorSystem
from headcount.clock import now_ms
from headcount.domain.events import Traversal
from headcount.errors import StoreError
from headcount.eventstore.records import AppendResult, QuarantineEntry
from headcount.eventstore.store import EventStore
from headcount.ingest import wire
from headcount.ingest.dpus import DpuRegistry
from headcount.metrics import Metrics

log = logging.getLogger(__name__)


class Message(Protocol):
    """What ingest needs of a received MQTT message."""

    @property
    def topic(self) -> str: ...

    @property
    def payload(self) -> bytes: ...


M = TypeVar("M", bound=Message)


@dataclass(frozen=True, slots=True)
class IngestSettings:
    """Group commit: a batch closes at ``max_events`` traversals or ``max_delay_s`` after its
    first message, whichever comes first. Payload limits and the clock-skew allowance are the
    wire format's."""

    max_events: int = 2000
    max_delay_s: float = 0.005
    max_payload: int = wire.DEFAULT_MAX_PAYLOAD
    max_batch: int = wire.DEFAULT_MAX_BATCH
    max_skew_ms: int = wire.DEFAULT_MAX_SKEW_MS
    queue_size: int = 10_000


@dataclass(slots=True)
class _Batch(Generic[M]):
    messages: list[M] = field(default_factory=list)
    traversals: list[Traversal] = field(default_factory=list)
    quarantine: list[QuarantineEntry] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)  # reason codes, for the metrics


class Ingest(Generic[M]):
    """Consumes ``messages`` until cancelled; ``ack`` acknowledges one message to the broker
    (called in receipt order, after commit)."""

    def __init__(
        self,
        messages: AsyncIterable[M],
        ack: Callable[[M], Awaitable[None]],
        *,
        store: EventStore,
        actors: ActorSystem,
        dpus: DpuRegistry,
        metrics: Metrics,
        settings: IngestSettings | None = None,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self._messages = messages
        self._ack = ack
        self.store = store
        self.actors = actors
        self.topology = actors.topology
        self.dpus = dpus
        self.metrics = metrics
        self.settings = settings or IngestSettings()
        self._clock = clock
        self._queue: asyncio.Queue[M] = asyncio.Queue(self.settings.queue_size)

    async def run(self) -> None:
        """Read, batch and commit until cancelled."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._read(), name="ingest:read")
            group.create_task(self._commit_loop(), name="ingest:commit")

    async def _read(self) -> None:
        async for message in self._messages:
            await self._queue.put(message)

    async def _commit_loop(self) -> None:
        while True:
            batch = await self._next_batch()
            await self._commit(batch)
            for message in batch.messages:
                await self._ack(message)

    async def _next_batch(self) -> _Batch[M]:
        """Decode messages into one batch until it holds ``max_events`` traversals or
        ``max_delay_s`` has passed since its first message."""
        batch: _Batch[M] = _Batch()
        self._add(batch, await self._queue.get())
        deadline = time.monotonic() + self.settings.max_delay_s
        while len(batch.traversals) < self.settings.max_events:
            try:
                message = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    async with asyncio.timeout(left):
                        message = await self._queue.get()
                except TimeoutError:
                    break
            self._add(batch, message)
        return batch

    def _add(self, batch: _Batch[M], message: M) -> None:
        batch.messages.append(message)
        now = self._clock()
        s = self.settings
        try:
            dpu_id, kind = wire.parse_topic(message.topic)
            if kind == "status":
                self.dpus.set_online(dpu_id, wire.decode_status(message.payload))
                return
            self.metrics.messages.inc()
            events = wire.decode(
                dpu_id, message.payload, max_payload=s.max_payload, max_batch=s.max_batch
            )
        except wire.WireError as e:
            batch.rejected.append(e.rejection.reason.value)
            batch.quarantine.append(self._refused(message, e.rejection, now))
            return
        kept, rejections = wire.screen(events, self.topology, now=now, max_skew_ms=s.max_skew_ms)
        batch.traversals.extend(kept)
        for rejection in rejections:
            batch.rejected.append(rejection.reason.value)
            batch.quarantine.append(self._refused(message, rejection, now))
        self.dpus.seen(dpu_id, now, max(t.seq for t in events))

    @staticmethod
    def _refused(message: Message, rejection: wire.Rejection, now: int) -> QuarantineEntry:
        payload = message.payload
        if rejection.event is not None:
            payload = wire.encode(rejection.event)
        return QuarantineEntry(
            origin=f"mqtt:{message.topic}",
            reason=f"{rejection.reason.value}: {rejection.detail}",
            payload=payload,
            received_at=now,
        )

    async def _commit(self, batch: _Batch[M]) -> None:
        delay = 0.1
        retried = False
        while True:
            try:
                started = time.perf_counter()
                result = await self.store.log.append(batch.traversals, quarantine=batch.quarantine)
                break
            except StoreError as e:
                # Nothing is acknowledged: retry the same batch until the store is back. The
                # failed attempt may have committed (an answer lost after COMMIT): the retry
                # then finds these traversals stored, and routes them all the same.
                retried = True
                log.warning("store unavailable, batch held (%s); retrying in %.1fs", e, delay)
                await asyncio.sleep(delay * (0.5 + random.random() / 2))
                delay = min(delay * 2, 10.0)
        m = self.metrics
        m.commit_seconds.observe(time.perf_counter() - started)
        m.batch_events.observe(len(batch.traversals))
        m.events.inc(len(result.new))
        m.duplicates.inc(result.duplicates)
        for reason in batch.rejected:
            m.quarantined.labels(reason).inc()
        if result.conflicts:
            m.quarantined.labels("seq_conflict").inc(len(result.conflicts))
        again = _stored_before(batch.traversals, result) if retried else []
        await self.actors.route([*result.new, *again])


def _stored_before(batch: Sequence[Traversal], result: AppendResult) -> list[Traversal]:
    """Traversals of a retried ``batch`` that an earlier, failed attempt may have stored: those
    the append found already stored, each once. Routing them again is harmless (the actors
    drop what they have); not routing them could lose them from the live counts."""
    new = {t.key for t in result.new}
    refused = {c.reported for c in result.conflicts}
    again: list[Traversal] = []
    for t in batch:
        if t.key not in new and t not in refused:
            new.add(t.key)
            again.append(t)
    return again
