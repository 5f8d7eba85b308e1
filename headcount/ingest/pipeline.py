"""From MQTT messages to stored, routed events: decode, screen, group commit, route, ack.

A message is acknowledged to the broker only after its events (or its quarantine record) are
committed, so a crash at any instant loses nothing the broker accepted: it redelivers what was
not acknowledged, and the store's unique key drops the repeats.

Every message received ends in one of these, each counted in a metric: its traversals stored
(or counted as duplicates), a DPU status applied or counted as from an unknown DPU, a
quarantine entry (a topic that is not a DPU topic, a payload or event refused), or, when the
store refuses even a minimal record of it, a log line and ``headcount_ingest_dropped``.

No single message can stop ingest. A store that is *down* holds the batch: nothing is
acknowledged, the same batch is retried with backoff, and :class:`IngestHealth` reports the
stall (``/healthz`` answers 503). A batch the store refuses for its *content*
(:class:`~headcount.errors.StoreDataError`) is committed in halves until the message at fault
is alone; that message is quarantined in a minimal form and acknowledged, the others are
stored as usual. A store that refuses every write (disk full, read-only:
:class:`~headcount.errors.StoreWritesRefusedError`) is a store that is down, not bad data.

Memory is bounded, never by dropping: the queue between the broker and the batch holds
``queue_size`` messages, a batch at most ``max_events`` messages, and the actors' mailboxes
are bounded too; when they are full, reading from the broker waits, and the broker holds what
is not acknowledged (Mosquitto sends at most ``max_inflight_messages`` unacknowledged).

Each DPU has a rate limit (:mod:`headcount.ingest.ratelimit`); what exceeds it is refused with
reason ``rate_limited``. Quarantine keeps a bounded number of entries per DPU and reason per
time window, so a flood of bad input is not a flood of writes.

(Longer than most modules: the path of a message from decode to acknowledgement, faults
included, is kept in one place to be read in one go.)
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections.abc import AsyncIterable, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from headcount.actors import ActorSystem
from headcount.clock import now_ms
from headcount.domain.events import Traversal
from headcount.domain.timefmt import format_ms
from headcount.errors import StoreDataError, StoreError, StoreWritesRefusedError
from headcount.eventstore.quarantine import MAX_PAYLOAD_KEPT
from headcount.eventstore.records import AppendResult, QuarantineEntry
from headcount.eventstore.store import EventStore
from headcount.ingest import ratelimit, wire
from headcount.ingest.dpus import DpuRegistry
from headcount.ingest.health import IngestHealth
from headcount.ingest.loss import LossAudit
from headcount.ingest.ratelimit import UNKNOWN_DPU, DpuRateLimiter, QuarantineBudget, RateLimit
from headcount.metrics import Metrics

__all__ = ["Ingest", "IngestSettings", "Message"]

log = logging.getLogger(__name__)

#: Messages read or acknowledged in a row before ingest lets other tasks run.
_YIELD_EVERY = 64


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
    first message, whichever comes first (while the batch before it still commits, it keeps
    filling: the next commit could not start anyway). Payload limits and the clock-skew
    allowance are the wire format's. Ingest counts as stalled (``/healthz`` 503) when
    messages have waited ``stall_after_s`` without a commit.

    ``dpu_rate`` and ``dpu_burst``: each DPU's limit in messages per second and its burst
    (``dpu_rate`` ``None``: no limit; defaults in :mod:`headcount.ingest.ratelimit`).
    ``quarantine_keep`` entries per DPU and reason are stored per ``quarantine_window_s``."""

    max_events: int = 2000
    max_delay_s: float = 0.005
    max_payload: int = wire.DEFAULT_MAX_PAYLOAD
    max_batch: int = wire.DEFAULT_MAX_BATCH
    max_skew_ms: int = wire.DEFAULT_MAX_SKEW_MS
    queue_size: int = 10_000
    stall_after_s: float = 30.0
    dpu_rate: float | None = ratelimit.DEFAULT_DPU_RATE
    dpu_burst: float = ratelimit.DEFAULT_DPU_BURST
    quarantine_keep: int = ratelimit.DEFAULT_QUARANTINE_KEEP
    quarantine_window_s: float = ratelimit.DEFAULT_QUARANTINE_WINDOW_S
    #: Route traversals the store already held to the actors as well: a shard of a sharded
    #: deployment shares the DPUs of a doorway between its spaces and another shard's, and the
    #: other shard may have stored one first (the actors drop what they have).
    route_duplicates: bool = False

    @property
    def max_held(self) -> int:
        """The most messages ingest holds unacknowledged: a full queue, a full batch being
        routed and acknowledged, the next one being committed, the one after it being read
        meanwhile, and the one the reader waits to queue."""
        return self.queue_size + 3 * self.max_events + 1

    @property
    def rate_limit(self) -> RateLimit | None:
        return None if self.dpu_rate is None else RateLimit(self.dpu_rate, self.dpu_burst)


@dataclass(slots=True)
class _Part(Generic[M]):
    """What one message brings to a batch: traversals to store, entries to quarantine (with
    their reason codes, for the metrics)."""

    message: M
    traversals: list[Traversal] = field(default_factory=list)
    quarantine: list[QuarantineEntry] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    #: A DPU's delivery report (its status map), compared once the batch is committed.
    report: tuple[str, wire.Report] | None = None
    #: The sender's key for the rate limit and the quarantine budget; whether the budget
    #: was already applied to ``quarantine``.
    dpu_key: str = UNKNOWN_DPU
    budgeted: bool = False
    #: An attempt to commit this part failed in a way that may have committed it after all
    #: (a lost connection at COMMIT): its traversals may come back as duplicates.
    uncertain: bool = False

    @property
    def empty(self) -> bool:
        return not self.traversals and not self.quarantine


@dataclass(slots=True)
class _Batch(Generic[M]):
    parts: list[_Part[M]] = field(default_factory=list)
    events: int = 0


@dataclass(slots=True)
class _Commit:
    """A batch on its way to the store and the broker: ``stored`` is done once its append is
    (the next batch's starts), ``task`` once it is routed and acknowledged too."""

    task: asyncio.Task[None]
    stored: asyncio.Future[None]
    #: The commit of the batch before it, which this one waits for to be appended first,
    #: then to be routed and acknowledged.
    before: asyncio.Task[None] | None

    @property
    def storing(self) -> bool:
        return not self.stored.done() and not self.task.done()

    def raise_failed(self) -> None:
        """Raise the error of a commit that failed (this one or the one before it)."""
        for task in (self.before, self.task):
            if task is not None and task.done() and not task.cancelled():
                error = task.exception()
                if error is not None:
                    raise error


class Ingest(Generic[M]):
    """Consumes ``messages`` until cancelled; ``ack`` acknowledges one message to the broker
    (called in receipt order, after commit). :attr:`health` tells how it is doing."""

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
        monotonic: Callable[[], float] = time.monotonic,
        health: IngestHealth | None = None,
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
        #: Messages read, and ``None`` when a commit ends (a wake-up for the next batch).
        self._queue: asyncio.Queue[M | None] = asyncio.Queue(self.settings.queue_size)
        self.health = health or IngestHealth(self.settings.stall_after_s, clock=clock)
        self.loss = LossAudit(store.log, dpus, metrics, clock=clock)
        self.limiter = DpuRateLimiter(
            self.settings.rate_limit, known=self.topology.knows_dpu, monotonic=monotonic
        )
        self._budget = QuarantineBudget(
            self.settings.quarantine_keep, self.settings.quarantine_window_s, monotonic=monotonic
        )
        #: Where the log was closed by ``partitions detach``, once a refusal showed it: the
        #: store refuses every event before it, so they are refused here without asking it.
        self._closed_before: int | None = None
        # The metrics a flood touches per message, by label (keys and reasons are bounded).
        self._limited = functools.cache(self.metrics.rate_limited.labels)
        self._suppressed = functools.cache(self.metrics.quarantine_suppressed.labels)

    async def run(self) -> None:
        """Read, batch and commit until cancelled."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._read(), name="ingest:read")
            group.create_task(self._commit_loop(), name="ingest:commit")

    async def _read(self) -> None:
        async for message in self._messages:
            self.health.received()
            await self._queue.put(message)

    async def _commit_loop(self) -> None:
        """Commit batches one after the other, each acknowledged once committed. The store
        works in its own thread or server, so the event loop does the rest meanwhile: the next
        batch is read and decoded while one is appended (and keeps filling until that append
        is done), and a batch is routed to the actors and acknowledged while the next one is
        appended. Appends, routes and acknowledgements each keep the batches' order."""
        committing: _Commit | None = None
        in_flight: set[asyncio.Task[None]] = set()
        loop = asyncio.get_running_loop()
        try:
            while True:
                batch = await self._next_batch(committing)
                if committing is not None and committing.before is not None:
                    # At most one batch is routed and acknowledged while the next one is
                    # appended and a third one read: what ingest holds stays bounded
                    # (IngestSettings.max_held).
                    await asyncio.wait([committing.before])
                    committing.raise_failed()
                stored: asyncio.Future[None] = loop.create_future()
                task = asyncio.create_task(
                    self._commit_and_ack(batch, stored, committing), name="ingest:commit"
                )
                committing = _Commit(task, stored, None if committing is None else committing.task)
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
                task.add_done_callback(self._committed)
                stored.add_done_callback(self._committed)
                # Let the commit start (its append, if the one before is done) before the
                # next batch is read: reading a full queue does not yield for a while.
                await asyncio.sleep(0)
        finally:
            for task in in_flight:
                task.cancel()
            if in_flight:
                await asyncio.wait(in_flight)

    async def _commit_and_ack(
        self, batch: _Batch[M], stored: asyncio.Future[None], previous: _Commit | None
    ) -> None:
        """Once the batch before it is appended, append this one and compare its DPUs'
        delivery reports with the store (before the next append can add to what they count);
        then, once the batch before it is routed and acknowledged, route this one to the
        actors and acknowledge its messages. ``stored`` is done when the append is (cancelled
        if it failed)."""
        routes: list[list[Traversal]] = []
        try:
            if previous is not None:
                await previous.stored
            await self._store(batch.parts, routes)
            for part in batch.parts:
                if part.report is not None:
                    await self.loss.reported(*part.report)
        except BaseException:
            stored.cancel()
            raise
        stored.set_result(None)
        # The next batch's commit, waiting for ``stored``, runs first: its append is under way
        # while this one is routed and acknowledged.
        await asyncio.sleep(0)
        if previous is not None:
            await previous.task
        for traversals in routes:
            await self.actors.route(traversals)
        for n, part in enumerate(batch.parts, start=1):
            await self._ack(part.message)
            if n % _YIELD_EVERY == 0:
                await asyncio.sleep(0)  # let the HTTP API answer between long runs
        self.health.acknowledged(len(batch.parts))

    async def _next_batch(self, committing: _Commit | None = None) -> _Batch[M]:
        """Decode messages into one batch until it holds ``max_events`` traversals, or
        ``max_delay_s`` has passed since its first message and the append before it
        (``committing``) is done. A commit that failed raises its error here."""
        batch: _Batch[M] = _Batch()
        message: M | None = None
        while message is None:  # None: an append or a commit ended, nothing to read
            if committing is not None:
                committing.raise_failed()
            message = await self._queue.get()
        self._add(batch, message)
        deadline = time.monotonic() + self.settings.max_delay_s
        limit = self.settings.max_events
        while batch.events < limit and len(batch.parts) < limit:
            try:
                message = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                if committing is not None:
                    committing.raise_failed()
                if committing is not None and committing.storing:
                    message = await self._queue.get()  # or the None its end puts
                else:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    try:
                        async with asyncio.timeout(left):
                            message = await self._queue.get()
                    except TimeoutError:
                        break
            if message is None:
                continue
            self._add(batch, message)
            if len(batch.parts) % _YIELD_EVERY == 0:
                # A full queue of cheap messages (a flood refused unread) would otherwise be
                # read in one go, holding up every HTTP answer meanwhile.
                await asyncio.sleep(0)
        return batch

    def _committed(self, _done: asyncio.Future[None]) -> None:
        """Wake a batch waiting for messages: the append or the commit before it ended (a full
        queue has messages to read: no need)."""
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(None)

    def _add(self, batch: _Batch[M], message: M) -> None:
        part = self._read_message(message)
        batch.parts.append(part)
        batch.events += len(part.traversals)

    def _read_message(self, message: M) -> _Part[M]:
        """Decode and screen one message: what it asks to store and to quarantine, within the
        quarantine budget of its DPU. A status is applied here (it is memory only)."""
        part = self._screen(message)
        if not part.quarantine or part.budgeted:
            return part
        entries: list[QuarantineEntry] = []
        reasons: list[str] = []
        for entry, reason in zip(part.quarantine, part.rejected, strict=True):
            if self._admit(part.dpu_key, reason):
                entries.append(entry)
                reasons.append(reason)
        part.quarantine, part.rejected = entries, reasons
        return part

    def _admit(self, key: str, reason: str) -> bool:
        """Whether the quarantine budget of ``key`` and ``reason`` takes one more entry; if
        not, it is counted (and logged once per window)."""
        stored, note = self._budget.admit(key, reason)
        if note is not None:
            log.warning("%s", note)
        if not stored:
            self._suppressed(reason).inc()
        return stored

    def _screen(self, message: M) -> _Part[M]:
        part = _Part(message)
        now = self._clock()
        s = self.settings
        try:
            dpu_id, kind = wire.parse_topic(message.topic)
            part.dpu_key = self.limiter.key(dpu_id)
            if kind == "status":
                status = wire.decode_status(message.payload)
                if self.topology.knows_dpu(dpu_id):
                    self.dpus.set_online(dpu_id, status.online)
                    if status.report is not None:
                        part.report = (dpu_id, status.report)
                    self.metrics.status.labels("applied").inc()
                else:
                    # Anyone can publish: a made-up DPU neither counts as online nor shows.
                    self.metrics.status.labels("unknown_dpu").inc()
                return part
            self.metrics.messages.inc()
            if not self.limiter.allow(dpu_id):
                return self._rate_limited(part, dpu_id, now)
            events, mismatched = wire.decode_batch(
                dpu_id, message.payload, max_payload=s.max_payload, max_batch=s.max_batch
            )
        except wire.WireError as e:
            part.rejected.append(e.rejection.reason.value)
            part.quarantine.append(self._refused(message, e.rejection, now))
            return part
        kept, rejections = wire.screen(events, self.topology, now=now, max_skew_ms=s.max_skew_ms)
        if self._closed_before is not None:
            kept, closed = _split_closed(kept, self._closed_before)
            rejections += closed
        part.traversals.extend(kept)
        for rejection in [*mismatched, *rejections]:
            part.rejected.append(rejection.reason.value)
            part.quarantine.append(self._refused(message, rejection, now))
        if events and self.topology.knows_dpu(dpu_id):
            self.dpus.seen(dpu_id, now, max(t.seq for t in events))
        return part

    def _rate_limited(self, part: _Part[M], dpu_id: str, now: int) -> _Part[M]:
        """Refuse a message over its DPU's rate limit, unread.

        It is acknowledged like any refused input, not held: MQTT 3.1.1 acknowledges in order
        and redelivers only on reconnection, so holding one message would hold every later
        message of every DPU behind it (the subscription is shared), the very starvation the
        limit is there to prevent; and the broker would only send the flood again. What a
        person needs to see is kept: the first payloads in quarantine, the rest in a metric.
        """
        self._limited(part.dpu_key).inc()
        part.budgeted = True
        if not self._admit(part.dpu_key, wire.Reason.RATE_LIMITED.value):
            return part  # the cheap way out, for a flood
        limit = self.settings.rate_limit
        detail = (
            f"DPU {dpu_id!r} sent more than its limit of {limit.rate:g} messages/s"
            f" (bursts of {limit.burst:g}); the message was acknowledged and not stored;"
            " check the DPU, or raise --dpu-rate/--dpu-burst if its traffic is genuine"
            if limit is not None
            else f"DPU {dpu_id!r} is over its rate limit"
        )
        rejection = wire.Rejection(wire.Reason.RATE_LIMITED, detail)
        part.rejected.append(rejection.reason.value)
        part.quarantine.append(self._refused(part.message, rejection, now))
        return part

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

    # -- committing ------------------------------------------------------------------------

    async def _store(self, parts: Sequence[_Part[M]], routes: list[list[Traversal]]) -> None:
        """Commit what ``parts`` ask to store, in one transaction if the store takes it. If it
        refuses their content, in halves, down to the one message at fault. What is to be
        routed to the actors goes to ``routes``, in order."""
        parts = [p for p in parts if not p.empty]
        if not parts:
            self.health.committed()  # nothing to store is progress too
            return
        try:
            await self._commit(parts, routes)
        except StoreDataError as e:
            if len(parts) == 1:
                await self._isolate(parts[0], e, routes)
                return
            log.warning(
                "the store refused a batch of %d messages for its content (%s);"
                " committing it in parts to find the message at fault",
                len(parts),
                _ascii(str(e), 500),  # the error may quote the stranger's bytes
            )
            half = len(parts) // 2
            await self._store(parts[:half], routes)
            await self._store(parts[half:], routes)

    async def _commit(self, parts: Sequence[_Part[M]], routes: list[list[Traversal]]) -> None:
        """Append the parts' traversals and quarantine entries in one transaction, retrying
        while the store is unavailable, then count what was stored and add it to ``routes``.
        Raises :class:`StoreDataError` (nothing stored) when the store refuses the content."""
        traversals = [t for p in parts for t in p.traversals]
        entries = [e for p in parts for e in p.quarantine]
        delay = 0.1
        while True:
            started = time.perf_counter()
            try:
                result = await self.store.log.append(traversals, quarantine=entries)
                break
            except StoreDataError:
                raise
            except StoreError as e:
                # Nothing is acknowledged: retry the same batch until the store is back. The
                # failed attempt may have committed (an answer lost after COMMIT): the retry
                # then finds these traversals stored, and routes them all the same.
                for part in parts:
                    part.uncertain = True
                self.health.failed(e)
                if isinstance(e, StoreWritesRefusedError):
                    log.error(
                        "%s; %d message(s) held, none acknowledged; retrying in %.1fs",
                        e,
                        len(parts),
                        delay,
                    )
                else:
                    log.warning("store unavailable, batch held (%s); retrying in %.1fs", e, delay)
                await asyncio.sleep(delay * (0.5 + random.random() / 2))
                delay = min(delay * 2, 10.0)
        self.health.committed()
        self.loss.stored(result.new)
        self.loss.forget(t.dpu_id for p in parts if p.uncertain for t in p.traversals)
        m = self.metrics
        m.commit_seconds.observe(time.perf_counter() - started)
        m.batch_events.observe(len(traversals))
        m.events.inc(len(result.new))
        m.duplicates.inc(result.duplicates)
        for part in parts:
            for reason in part.rejected:
                m.quarantined.labels(reason).inc()
        if result.conflicts:
            m.quarantined.labels("seq_conflict").inc(len(result.conflicts))
        if self.settings.route_duplicates:
            routes.append(_all_stored(traversals, result))
        else:
            routes.append([*result.new, *_stored_before(parts, result)])

    async def _isolate(
        self, part: _Part[M], error: StoreDataError, routes: list[list[Traversal]]
    ) -> None:
        """Store what it can of a message whose content the store refuses. Events older than
        a PostgreSQL log closed by ``partitions detach`` (what the store refuses event by
        event) cost only themselves: each is quarantined, the rest of the message stored.
        Otherwise the message is quarantined in a form any store holds: printable ASCII of
        bounded length and a bounded prefix of the payload. If even that is refused, it is
        logged and counted as dropped. Either way it is acknowledged, in a few commits at
        most, so nothing after it waits long."""
        if part.traversals and await self._refuse_closed(part, routes):
            return
        message = part.message
        log.error(
            "the store refuses what the message on topic %s holds (%s); quarantining it"
            " in a minimal form",
            _ascii(message.topic, 200),
            _ascii(str(error), 500),
        )
        reason = wire.Reason.UNSTORABLE.value
        payload = bytes(message.payload)
        entry = QuarantineEntry(
            origin=f"mqtt:{_ascii(message.topic, 200)}",
            reason=(
                f"{reason}: the store refused this message ({_ascii(str(error), 500)});"
                f" {len(part.traversals)} traversal(s) and {len(part.quarantine)} refusal(s)"
                f" not stored; the payload was {len(payload):,} bytes"
            ),
            payload=payload[:MAX_PAYLOAD_KEPT],
            received_at=self._clock(),
        )
        minimal: _Part[M] = _Part(message, quarantine=[entry], rejected=[reason])
        try:
            await self._commit([minimal], routes)
        except StoreDataError as e:
            log.error(
                "the store refuses even a minimal quarantine entry for the message on topic %s"
                " (%s); dropped",
                _ascii(message.topic, 200),
                _ascii(str(e), 500),
            )
            self.metrics.dropped.labels(reason).inc()

    async def _refuse_closed(self, part: _Part[M], routes: list[list[Traversal]]) -> bool:
        """If the log is closed before some of the part's events, commit the part again with
        those quarantined instead (one commit; what the store still refuses goes on to
        :meth:`_isolate`'s whole-message form) and say so; ``False`` when none is."""
        try:
            closed_before = await self.store.log.closed_before()
        except StoreError as e:  # the whole-message form then, not a stopped ingest
            log.warning("cannot read where the log was closed (%s)", e)
            return False
        if closed_before is None:
            return False
        self._closed_before = closed_before
        kept, closed = _split_closed(part.traversals, closed_before)
        if not closed:
            return False
        now = self._clock()
        entries = [self._refused(part.message, rejection, now) for rejection in closed]
        again = _Part(
            part.message,
            kept,
            [*part.quarantine, *entries],
            [*part.rejected, *(r.reason.value for r in closed)],
            dpu_key=part.dpu_key,
            budgeted=True,
            uncertain=part.uncertain,
        )
        await self._store([again], routes)
        return True


def _split_closed(
    traversals: Sequence[Traversal], closed_before: int
) -> tuple[list[Traversal], list[wire.Rejection]]:
    """The traversals a log closed before ``closed_before`` still takes, and a refusal for
    each it does not."""
    kept: list[Traversal] = []
    refused: list[wire.Rejection] = []
    for t in traversals:
        if t.ts >= closed_before:
            kept.append(t)
        else:
            refused.append(
                wire.Rejection(
                    wire.Reason.UNSTORABLE,
                    f"DPU {t.dpu_id!r} seq {t.seq}: ts {format_ms(t.ts)} is before"
                    f" {format_ms(closed_before)}, where the log was closed ('headcount"
                    " partitions detach'): the store takes no event before it, so this one is"
                    " kept here; the message's other events are stored as usual",
                    t,
                )
            )
    return kept, refused


def _stored_before(parts: Sequence[_Part[M]], result: AppendResult) -> list[Traversal]:
    """Traversals of ``parts`` that an earlier, failed attempt may have stored: those of
    uncertain parts that the append found already stored, each once. Routing them again is
    harmless (the actors drop what they have), not routing them could lose them from the live
    counts."""
    if not any(part.uncertain for part in parts):
        return []
    new = {t.key for t in result.new}
    refused = {c.reported for c in result.conflicts}
    again: list[Traversal] = []
    for part in parts:
        if not part.uncertain:
            continue
        for t in part.traversals:
            if t.key not in new and t not in refused:
                new.add(t.key)
                again.append(t)
    return again


def _all_stored(traversals: Sequence[Traversal], result: AppendResult) -> list[Traversal]:
    """Every traversal of the batch that the store holds now, each once: the new ones and the
    duplicates, not the conflicts (quarantined)."""
    refused = {c.reported for c in result.conflicts}
    seen: set[tuple[str, int]] = set()
    held: list[Traversal] = []
    for t in traversals:
        if t.key not in seen and t not in refused:
            seen.add(t.key)
            held.append(t)
    return held


def _ascii(text: str, limit: int) -> str:
    """``text`` as printable ASCII (escapes for everything else), at most ``limit`` chars."""
    escaped = ascii(text[:limit])[1:-1]
    return escaped if len(escaped) <= limit else escaped[: limit - 3] + "..."
