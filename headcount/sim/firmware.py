"""The DPU firmware, simulated: store and forward over MQTT, the way real DPUs do it.

Each simulated DPU keeps an outgoing buffer. The schedule puts an event in it when the DPU
detects it (or later, for an event held back by the reorder fault); the DPU publishes the head
of the buffer at QoS 1, one event as a map or, when more are waiting, up to ``batch`` of them as
an array (a backlog after an outage or a lost connection, or events that came while a publish
was unacknowledged). Events leave the buffer only once the broker has acknowledged them; a
publish that fails, or is not acknowledged in time, is sent again. So nothing is lost
while the broker is away, and an event may reach it twice (QoS 1 is "at least once"; the store
counts it once).

Connections. Thousands of DPUs with a connection each would be thousands of sockets and client
loops in one process, so the DPUs share a pool of connections, each DPU with its own buffer and
sequence numbers. A last will belongs to a connection, so each connection carries the will
("offline", retained) of the first DPU on it, and every DPU keeps its retained status true by
publishing it: "online" on every connection it gets, "offline" when one of its outages begins
(the message its will would have caused) and "offline" at a clean end. With as many connections
as DPUs each DPU has its own connection and will, like real firmware. If the simulator dies, the
broker marks only the first DPU of each connection offline; the others keep their last status.
With ``credentials`` (DPU accounts, ``headcount dpus credentials``) every DPU logs in as itself
on a connection of its own, its DPU id as username and client id, as a broker that lets a DPU
publish only under its own id requires. Every event carries its ``dpu_id`` (see ``wire``).

Every status it publishes is the status map with its delivery report (see
:mod:`headcount.ingest.wire`): the distinct traversals the broker acknowledged, counted from the
start of the run, and their lowest and highest seq. While online it publishes it again as a
heartbeat every ``heartbeat`` seconds when the count has changed, so the service can compare
what was sent with what it stored. (The last will stays the plain text ``offline``.)

About 500 lines, over this project's usual 400: the buffers, the connection pool (shared, or one
per DPU account) and the publish-and-acknowledge loop share the rule "an event leaves its
buffer only once acknowledged", and reading that rule in one module is worth the length.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import random
import ssl
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Final

import aiomqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.reasoncodes import ReasonCode

from headcount.domain.events import Traversal
from headcount.errors import HeadcountError
from headcount.ingest import wire
from headcount.ingest.mqtt import Backoff, BrokerAddress, tls_context
from headcount.ingest.tls import is_untrusted
from headcount.progress import Progress
from headcount.sim.errors import SimulatorError
from headcount.sim.pace import Pace
from headcount.sim.schedule import Schedule

log = logging.getLogger(__name__)

ONLINE: Final = b"online"
OFFLINE: Final = b"offline"
#: CONNACK refusals that may pass (server unavailable, busy, connection rate exceeded): retried.
#: Any other refusal (bad credentials, not authorised, bad client id) will not pass by waiting.
_TRANSIENT_REFUSALS: Final = frozenset({3, 136, 137, 159})


@dataclass
class Stats:
    """What the firmware did, in events (traversals) and messages."""

    #: Events put in a publish, every attempt and every duplicate copy included.
    sent: int = 0
    #: Events the broker acknowledged (duplicate copies not included).
    acknowledged: int = 0
    #: Traversal messages the broker acknowledged, and how many of them were arrays.
    publishes: int = 0
    batches: int = 0
    #: Duplicate copies the broker acknowledged (the duplicates fault).
    duplicates: int = 0
    #: Events sent again because a publish failed or was not acknowledged in time.
    retransmitted: int = 0
    #: Connections made again after one was lost.
    reconnections: int = 0
    #: Events never acknowledged: still in a DPU's buffer when the run ended.
    buffered: int = 0


@dataclass(slots=True)
class _Outgoing:
    """An event in a DPU's buffer. ``duplicate``: publish a copy once it is acknowledged;
    ``copy``: this is that copy."""

    traversal: Traversal
    duplicate: bool = False
    copy: bool = False
    attempts: int = 0


class Connection:
    """One MQTT connection, shared by :attr:`dpus`, connected again with backoff whenever it is
    lost, until ``stop`` is set."""

    def __init__(
        self,
        address: BrokerAddress,
        client_id: str,
        *,
        stats: Stats,
        backoff: Backoff,
        timeout: float,
        refused_hint: str = "check the user and password in --broker (mqtt://user:password@host:port)",
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.address = address
        self._refused_hint = refused_hint
        self._tls = tls
        self.client_id = client_id
        self.dpus: list[SimulatedDpu] = []
        self._stats = stats
        self._backoff = backoff
        self._timeout = timeout
        self._client: aiomqtt.Client | None = None
        self._lost: asyncio.Future[None] | None = None
        self._connected_before = False
        self._rng = random.Random()  # jitter only: not part of the simulation

    @property
    def up(self) -> bool:
        return self._client is not None

    async def run(self, stop: asyncio.Event) -> None:
        """Stay connected until ``stop``; :class:`SimulatorError` if the broker refuses us
        for a reason waiting will not fix."""
        delays = self._backoff.delays(self._rng)
        warned = False  # a failure to connect was logged at WARNING since the last connection
        while not stop.is_set():
            try:
                await self._session(stop)
            except MqttConnectError as e:
                if _refusal(e) not in _TRANSIENT_REFUSALS:
                    raise SimulatorError(
                        f"the MQTT broker {self.address} refused the connection of"
                        f" {self.client_id!r}: {e}; {self._refused_hint}"
                    ) from e
                warned = self._cannot_connect(e, warned)
            except aiomqtt.MqttError as e:
                self._refuse_untrusted(e)
                warned = self._cannot_connect(e, warned)
            else:
                # Connected, then stopped or lost (the loss is logged): back off afresh.
                delays, warned = self._backoff.delays(self._rng), False
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(next(delays)):
                    await stop.wait()

    def _refuse_untrusted(self, error: aiomqtt.MqttError) -> None:
        """A certificate we do not trust stays untrusted however long we wait."""
        if is_untrusted(error):
            raise SimulatorError(
                f"cannot connect to {self.address}: {self.address.explain(error)} (--broker)"
            ) from error

    def _cannot_connect(self, error: aiomqtt.MqttError, warned: bool) -> bool:
        """Log a failed attempt: at WARNING the first time, then at DEBUG until connected."""
        log.log(
            logging.DEBUG if warned else logging.WARNING,
            "cannot connect to the MQTT broker %s (%s); DPUs buffer their events and retry",
            self.address,
            self.address.explain(error),
        )
        return True

    async def _session(self, stop: asyncio.Event) -> None:
        """One connection, from connecting until ``stop`` or until it is lost (logged)."""
        client = aiomqtt.Client(
            self.address.host,
            self.address.port,
            username=self.address.username,
            password=self.address.password,
            identifier=self.client_id,
            clean_session=True,
            will=aiomqtt.Will(self.dpus[0].status_topic, OFFLINE, qos=1, retain=True),
            timeout=self._timeout,
            max_inflight_messages=max(20, 2 * len(self.dpus)),
            tls_context=self._tls,
        )
        # Every DPU of the connection may wait for an acknowledgement at once: that is the point.
        client.pending_calls_threshold = 4 * len(self.dpus) + 10
        async with client:
            if self._connected_before:
                self._stats.reconnections += 1
                log.info("connected again to the MQTT broker %s", self.address)
            self._connected_before = True
            ending = asyncio.ensure_future(_until_lost(client))
            stopping = asyncio.ensure_future(stop.wait())
            self._client, self._lost = client, asyncio.get_running_loop().create_future()
            for dpu in self.dpus:
                dpu.connected()
            try:
                await asyncio.wait((ending, stopping), return_when=asyncio.FIRST_COMPLETED)
            finally:
                self._lost.set_result(None)
                self._client = self._lost = None
                for task in (ending, stopping):
                    task.cancel()
                for dpu in self.dpus:
                    dpu.wake()
            if ending.done() and not ending.cancelled() and ending.exception() is not None:
                log.warning(
                    "lost the connection to the MQTT broker %s (%s); DPUs buffer their events",
                    self.address,
                    ending.exception(),
                )

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> bool:
        """Publish at QoS 1: True once the broker acknowledged it, False when not connected, when
        the connection was lost first, or when no acknowledgement came within the timeout."""
        client, lost = self._client, self._lost
        if client is None or lost is None:
            return False
        sending = asyncio.ensure_future(
            client.publish(topic, payload, qos=1, retain=retain, timeout=self._timeout)
        )
        try:
            await asyncio.wait((sending, lost), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not sending.done():
                sending.cancel()
        if not sending.done() or sending.cancelled():
            return False
        error = sending.exception()
        if error is not None:
            log.debug("publish on %s not acknowledged: %s", topic, error)
            return False
        return True


class SimulatedDpu:
    """One DPU: its outgoing buffer, its status, and the loop that uploads them."""

    def __init__(
        self,
        dpu_id: str,
        connection: Connection,
        *,
        batch: int,
        stats: Stats,
        on_acknowledged: Callable[[int], None],
        heartbeat: float = 30.0,
    ) -> None:
        self.dpu_id = dpu_id
        self.topic = wire.traversals_topic(dpu_id)
        self.status_topic = wire.status_topic(dpu_id)
        self.connection = connection
        self.buffer: deque[_Outgoing] = deque()
        self.offline = False
        self.finished = False
        self._batch = batch
        self._stats = stats
        self._on_acknowledged = on_acknowledged
        self._announced: bytes | None = None
        self._changed = asyncio.Event()
        self._heartbeat = heartbeat
        # The delivery report: distinct traversals the broker acknowledged, and their seqs.
        self._report = wire.Report(0)
        self._reported: wire.Report | None = None  # the report last published
        self._reported_at = 0.0
        connection.dpus.append(self)

    def release(self, traversal: Traversal, duplicate: bool) -> None:
        """The DPU detected ``traversal`` (or stops holding it back): it goes in the buffer."""
        self.buffer.append(_Outgoing(traversal, duplicate))
        self.wake()

    def set_offline(self, offline: bool) -> None:
        """An outage begins (True) or ends (False): the DPU cannot publish meanwhile."""
        self.offline = offline
        self.wake()

    def finish(self) -> None:
        """No more events: upload what is left, then say "offline" and stop."""
        self.finished = True
        self.wake()

    def connected(self) -> None:
        """A new connection: the DPU must announce its status on it."""
        self._announced = None
        self.wake()

    def wake(self) -> None:
        self._changed.set()

    @property
    def unacknowledged(self) -> int:
        """Events in the buffer the broker has not acknowledged (copies not counted)."""
        return sum(1 for item in self.buffer if not item.copy)

    def _status(self) -> bytes:
        return OFFLINE if self.offline or (self.finished and not self.buffer) else ONLINE

    def _heartbeat_in(self) -> float | None:
        """Seconds until a heartbeat is due (0: now), None while none is needed or none can
        be sent (a new connection wakes the DPU)."""
        if self.offline or not self.connection.up or self._reported == self._report:
            return None
        loop = asyncio.get_running_loop()
        return max(0.0, self._reported_at + self._heartbeat - loop.time())

    async def run(self) -> None:
        """Upload until finished with an empty buffer and "offline" announced."""
        while True:
            status = self._status()
            if self.connection.up and (self._announced != status or self._heartbeat_in() == 0):
                await self._announce(status)
            elif self.finished and not self.buffer and self._announced == OFFLINE:
                return
            elif self.buffer and not self.offline and self.connection.up:
                await self._upload()
            else:
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._heartbeat_in()):
                        await self._changed.wait()

    async def _announce(self, status: bytes) -> None:
        report = self._report
        payload = wire.encode_status(status == ONLINE, report)
        if await self.connection.publish(self.status_topic, payload, retain=True):
            self._announced, self._reported = status, report
            self._reported_at = asyncio.get_running_loop().time()

    async def _upload(self) -> None:
        """Publish the head of the buffer; on acknowledgement drop it and queue the copies the
        duplicates fault asks for (they go out in the next publish)."""
        chunk = list(itertools.islice(self.buffer, self._batch))
        events = [item.traversal for item in chunk]
        for item in chunk:
            if item.attempts:
                self._stats.retransmitted += 1
            item.attempts += 1
        self._stats.sent += len(chunk)
        payload = wire.encode(events[0] if len(events) == 1 else events, with_dpu_id=True)
        if not await self.connection.publish(self.topic, payload):
            return
        for _ in chunk:
            self.buffer.popleft()
        self._stats.publishes += 1
        if len(chunk) > 1:
            self._stats.batches += 1
        copies = [_Outgoing(item.traversal, copy=True) for item in chunk if item.duplicate]
        self.buffer.extendleft(reversed(copies))
        self._count([item.traversal.seq for item in chunk if not item.copy])
        acknowledged = sum(1 for item in chunk if not item.copy)
        self._stats.duplicates += len(chunk) - acknowledged
        self._stats.acknowledged += acknowledged
        self._on_acknowledged(self._stats.acknowledged)

    def _count(self, seqs: list[int]) -> None:
        """``seqs`` were acknowledged by the broker for the first time: add them to the report."""
        if not seqs:
            return
        r = self._report
        first = min(seqs) if r.first is None else min(r.first, *seqs)
        last = max(seqs) if r.seq is None else max(r.seq, *seqs)
        self._report = wire.Report(r.sent + len(seqs), first, last)


async def run_firmware(
    schedule: Schedule,
    address: BrokerAddress,
    pace: Pace,
    *,
    batch: int,
    connections: int,
    client_prefix: str = "headcount-sim",
    backoff: Backoff | None = None,
    publish_timeout: float = 10.0,
    drain_timeout: float = 60.0,
    progress: Progress | None = None,
    credentials: Mapping[str, str] | None = None,
    heartbeat: float = 30.0,
) -> Stats:
    """Carry out ``schedule`` against the broker at ``address`` at ``pace``, then wait up to
    ``drain_timeout`` seconds for every buffer to empty, and disconnect cleanly.

    Client ids are ``{client_prefix}-{n}``; with ``credentials`` (DPU id to password) each DPU
    has a connection of its own, its id as username and client id, and ``connections`` is
    not used. Each DPU repeats its status with its delivery report every ``heartbeat`` seconds
    while its count changes. Raises :class:`SimulatorError` when the broker refuses the
    connection for good, or when a DPU has no password in ``credentials``; an unreachable
    broker is retried until the end, and what it never took is counted in
    :attr:`Stats.buffered`.
    """
    if not 1 <= batch <= wire.DEFAULT_MAX_BATCH:
        raise ValueError(f"batch must be 1 to {wire.DEFAULT_MAX_BATCH}, not {batch}")
    stats = Stats()
    tls = tls_context(address)  # one for every connection: it reads the CA file once
    if credentials is None:
        pool = [
            Connection(
                address,
                f"{client_prefix}-{n}",
                stats=stats,
                backoff=backoff or Backoff(),
                timeout=publish_timeout,
                tls=tls,
            )
            for n in range(max(1, min(connections, len(schedule.dpu_ids))))
        ]
    else:
        pool = _own_connections(
            schedule.dpu_ids,
            address,
            credentials,
            stats,
            backoff or Backoff(),
            publish_timeout,
            tls,
        )
    report = progress.update if progress is not None else _ignore
    dpus = {
        dpu_id: SimulatedDpu(
            dpu_id,
            pool[n % len(pool)],
            batch=batch,
            stats=stats,
            on_acknowledged=report,
            heartbeat=heartbeat,
        )
        for n, dpu_id in enumerate(schedule.dpu_ids)
    }
    stop = asyncio.Event()
    try:
        async with asyncio.TaskGroup() as group:
            for n, connection in enumerate(pool):
                if connection.dpus:
                    group.create_task(connection.run(stop), name=f"sim:connection-{n}")
            uploads = [
                group.create_task(dpu.run(), name=f"sim:dpu-{dpu.dpu_id}") for dpu in dpus.values()
            ]
            await _play(schedule, dpus, pace)
            for dpu in dpus.values():
                dpu.finish()
            if uploads:
                _, late = await asyncio.wait(uploads, timeout=drain_timeout)
                for task in late:
                    task.cancel()
            stop.set()
    except BaseExceptionGroup as failures:
        failure = next((e for e in failures.exceptions if isinstance(e, HeadcountError)), None)
        if failure is None:
            raise
        raise failure from None
    stats.buffered = sum(dpu.unacknowledged for dpu in dpus.values())
    return stats


def _own_connections(
    dpu_ids: Sequence[str],
    address: BrokerAddress,
    credentials: Mapping[str, str],
    stats: Stats,
    backoff: Backoff,
    timeout: float,
    tls: ssl.SSLContext | None,
) -> list[Connection]:
    """A connection per DPU, logged in as that DPU, in ``dpu_ids`` order."""
    missing = [dpu_id for dpu_id in dpu_ids if dpu_id not in credentials]
    if missing:
        shown = ", ".join(missing[:5]) + (
            f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        )
        raise SimulatorError(
            f"--credentials has no password for DPU {shown}; make them with 'headcount dpus"
            " credentials' for the simulated topology (--write-topology writes it)"
        )
    hint = "check that DPU's password in --credentials and that the broker knows its account"
    return [
        Connection(
            replace(address, username=dpu_id, password=credentials[dpu_id]),
            dpu_id,
            stats=stats,
            backoff=backoff,
            timeout=timeout,
            refused_hint=hint,
            tls=tls,
        )
        for dpu_id in dpu_ids
    ]


async def _until_lost(client: aiomqtt.Client) -> None:
    """Return when the connection ends (aiomqtt raises then). The DPUs subscribe to nothing,
    but a broker may still send them messages: amqtt 0.12 sends every new connection the
    retained messages of every topic filter *any* client subscribed to (``dpus/+/status`` of
    the service, say). Read and ignore them."""
    async for _ in client.messages:
        pass


def _refusal(error: MqttConnectError) -> int | None:
    """The CONNACK code of a refused connection, as a number."""
    code = error.rc
    return code.value if isinstance(code, ReasonCode) else code


def _ignore(_: int) -> None:
    """No progress to report to."""


async def _play(schedule: Schedule, dpus: Mapping[str, SimulatedDpu], pace: Pace) -> None:
    """Act on the schedule as the simulated clock reaches each instant, then wait for the
    simulated end."""
    actions: list[tuple[int, int, int, Callable[[], None]]] = []
    for outage in schedule.outages:
        dpu = dpus[outage.dpu_id]
        actions.append((outage.start, 2, len(actions), functools.partial(dpu.set_offline, True)))
        actions.append((outage.end, 0, len(actions), functools.partial(dpu.set_offline, False)))
    for send in schedule.sends:
        dpu = dpus[send.traversal.dpu_id]
        release = functools.partial(dpu.release, send.traversal, send.duplicate)
        actions.append((send.release, 1, len(actions), release))
    actions.sort(key=lambda action: action[:3])
    loop = asyncio.get_running_loop()
    began = loop.time()
    for n, (at, _, _, act) in enumerate(actions):
        delay = began + pace.offset(at) - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        elif n % 100 == 0:
            await asyncio.sleep(0)  # behind the clock: still let the DPUs publish
        act()
    delay = began + pace.offset(schedule.end) - loop.time()
    if delay > 0:
        await asyncio.sleep(delay)
