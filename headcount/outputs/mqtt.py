"""MQTT out: each space's state, retained, throttled per space; capacity alerts; the service's
availability with a last will; Home Assistant discovery configs.

Its own aiomqtt client (QoS 1, clean session; the subscriber's persistent session is not
mixed with publishing). Nothing here is awaited by counting: :meth:`MqttOut.offer` and
:meth:`MqttOut.alert` only record, and one task sends. What it keeps per space is the newest
state let through by the throttle and whether the broker has it; while the broker is away
only that newest state waits (the throttled intermediate values are lost, the last never),
and on every (re)connection the availability, the discovery configs and every space's newest
state are published again, all retained, so a broker that lost them has them back.

At a clean stop the states the throttle still holds are sent, then ``offline`` (retained);
if the process dies instead, the broker publishes the same ``offline`` as its last will.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Collection, Iterable, Mapping
from importlib.metadata import PackageNotFoundError, version
from itertools import islice

import aiomqtt

from headcount.domain.topology import Space, Topology
from headcount.ingest.mqtt import Backoff, BrokerAddress, tls_context
from headcount.outputs.alerts import Alert
from headcount.outputs.payloads import (
    AVAILABLE,
    NOT_AVAILABLE,
    Topics,
    discovery_configs,
    state_payload,
    topic_problem,
)
from headcount.outputs.throttle import Throttle

__all__ = ["DEFAULT_PUBLISH_INTERVAL_S", "MqttOut"]

log = logging.getLogger(__name__)

DEFAULT_PUBLISH_INTERVAL_S = 1.0
#: Publishes in flight at once (each waits for its PUBACK).
_CONCURRENT = 64
#: How long a clean stop may take to say goodbye to the broker.
_FAREWELL_S = 5.0

#: A state to publish: ts, count, and the entrances and exits behind it when known.
_State = tuple[int, int, int | None, int | None]


class MqttOut:
    """Publishes the spaces of ``topology`` (those of ``space_ids`` when given: a shard's) to
    the broker at ``address``.

    Call :meth:`offer` with each new count of a space (and once per space at the start), and
    run :meth:`run` until cancelled. A space whose id cannot be an MQTT topic level (it holds
    ``/``, ``+`` or ``#``) is left out, with one warning.
    """

    def __init__(
        self,
        address: BrokerAddress,
        topology: Topology,
        *,
        client_id: str,
        interval_s: float = DEFAULT_PUBLISH_INTERVAL_S,
        homeassistant: bool = False,
        topics: Topics | None = None,
        reconnect: Backoff | None = None,
        alert_queue: int = 1000,
        keepalive: int = 30,
        space_ids: Collection[str] | None = None,
    ) -> None:
        self.address = address
        self.client_id = client_id
        self.topics = topics or Topics()
        self.homeassistant = homeassistant
        spaces = topology.spaces
        if space_ids is not None:  # a shard's own spaces: each space has one publisher
            spaces = {space_id: spaces[space_id] for space_id in space_ids}
        self._spaces = _publishable(spaces)
        self._throttle: Throttle[str, _State] = Throttle(interval_s)
        self._reconnect = reconnect or Backoff()
        self._keepalive = keepalive
        self._tls = tls_context(address)
        self._last: dict[str, bytes] = {}  # the newest state let through, per space
        self._unsent: dict[str, None] = {}  # spaces whose newest state the broker lacks
        self._alerts: deque[Alert] = deque(maxlen=alert_queue)
        self._wake = asyncio.Event()  # something to send
        self._timer_wake = asyncio.Event()  # the throttle holds something new
        self.connected = asyncio.Event()

    # -- what the rest of the service calls; never waits -----------------------------------

    def offer(
        self,
        space_id: str,
        ts: int,
        count: int,
        *,
        entrances: int | None = None,
        exits: int | None = None,
    ) -> None:
        """The space's count changed (``ts`` ms): publish it, now or when its interval ends;
        with the ``entrances`` and ``exits`` behind it when given."""
        if space_id not in self._spaces:
            return
        state = (ts, count, entrances, exits)
        if self._throttle.offer(space_id, state, _now()):
            self._release(space_id, state)
        else:
            self._timer_wake.set()

    def alert(self, alert: Alert) -> None:
        """Publish ``alert`` (not retained: an alert is an event; the state topic holds the
        count). While the broker is away the newest ``alert_queue`` alerts wait."""
        if alert.space_id in self._spaces:
            self._alerts.append(alert)
            self._wake.set()

    def _release(self, space_id: str, state: _State) -> None:
        ts, count, entrances, exits = state
        self._last[space_id] = state_payload(
            self._spaces[space_id], count, ts, entrances=entrances, exits=exits
        )
        self._unsent[space_id] = None
        self._wake.set()

    # -- the task ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Publish until cancelled; reconnect with backoff whenever the broker is lost."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._timer(), name="mqtt-out-throttle")
            tasks.create_task(self._connection(), name="mqtt-out-connection")

    async def _timer(self) -> None:
        """Let the throttle's held-back states through when their interval ends."""
        while True:
            self._timer_wake.clear()
            for space_id, state in self._throttle.due(_now()):
                self._release(space_id, state)
            when = self._throttle.next_due()
            delay = None if when is None else max(0.0, when - _now())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._timer_wake.wait()

    async def _connection(self) -> None:
        delays = self._reconnect.delays()
        down = False
        while True:
            try:
                async with self._client() as client:
                    log.info(
                        "MQTT out: %s %s as %r",
                        "connected again to" if down else "publishing to",
                        self.address,
                        self.client_id,
                    )
                    down = False
                    delays = self._reconnect.delays()
                    await self._publish_all(client)
            except aiomqtt.MqttError as e:
                self.connected.clear()
                if not down:
                    log.warning(
                        "MQTT out: broker %s lost or unreachable (%s); the newest state of"
                        " each space is sent once it is back (logged again then)",
                        self.address,
                        self.address.explain(e),
                    )
                down = True
            await asyncio.sleep(next(delays))

    def _client(self) -> aiomqtt.Client:
        will = aiomqtt.Will(self.topics.status, NOT_AVAILABLE, qos=1, retain=True)
        client = aiomqtt.Client(
            self.address.host,
            self.address.port,
            username=self.address.username,
            password=self.address.password,
            identifier=self.client_id,
            clean_session=True,
            keepalive=self._keepalive,
            will=will,
            tls_context=self._tls,
            max_inflight_messages=_CONCURRENT,
        )
        # Up to _CONCURRENT publishes wait for their PUBACK by design; aiomqtt would log a
        # warning for each one past 10.
        client.pending_calls_threshold = _CONCURRENT + 1
        return client

    async def _publish_all(self, client: aiomqtt.Client) -> None:
        """Availability, discovery configs, every newest state; then whatever comes."""
        try:
            await client.publish(self.topics.status, AVAILABLE, qos=1, retain=True)
            if self.homeassistant:
                configs = {
                    topic: payload
                    for space in self._spaces.values()
                    for topic, payload in discovery_configs(space, self.topics, _version()).items()
                }
                await _publish_many(client, configs.items())
            self._unsent.update(dict.fromkeys(self._last))
            self.connected.set()
            await self._send(client)
        except asyncio.CancelledError:
            await self._farewell(client)
            raise

    async def _send(self, client: aiomqtt.Client) -> None:
        while True:
            self._wake.clear()
            if self._alerts:
                alert = self._alerts[0]
                topic = self.topics.alerts(alert.space_id)
                await client.publish(topic, alert.payload(), qos=1, retain=False)
                if self._alerts and self._alerts[0] is alert:
                    self._alerts.popleft()
            elif self._unsent:
                await self._send_states(client, list(islice(self._unsent, _CONCURRENT)))
            else:
                await self._wake.wait()

    async def _send_states(self, client: aiomqtt.Client, space_ids: list[str]) -> None:
        # A state released while its predecessor is in flight is marked unsent again by
        # _release, and goes in a later batch: a space's states reach the broker in order.
        sent = [(self.topics.state(space_id), self._last[space_id]) for space_id in space_ids]
        for space_id in space_ids:
            del self._unsent[space_id]
        try:
            await _publish_many(client, sent)
        except BaseException:
            for space_id in space_ids:
                self._unsent.setdefault(space_id, None)
            raise

    async def _farewell(self, client: aiomqtt.Client) -> None:
        """At a clean stop: what the throttle holds, what is unsent, then ``offline``."""
        for space_id, state in self._throttle.flush():
            self._release(space_id, state)
        sent = [(self.topics.state(space_id), self._last[space_id]) for space_id in self._unsent]
        try:
            async with asyncio.timeout(_FAREWELL_S):
                while self._alerts:
                    alert = self._alerts.popleft()
                    topic = self.topics.alerts(alert.space_id)
                    await client.publish(topic, alert.payload(), qos=1, retain=False)
                await _publish_many(client, sent)
                await client.publish(self.topics.status, NOT_AVAILABLE, qos=1, retain=True)
        except (aiomqtt.MqttError, TimeoutError) as e:
            log.warning("MQTT out: could not say offline at the stop (%r); the will says it", e)
        else:
            self._unsent.clear()
            log.info("MQTT out: offline published at %s", self.address)


async def _publish_many(client: aiomqtt.Client, messages: Iterable[tuple[str, bytes]]) -> None:
    """Publish retained at QoS 1, up to :data:`_CONCURRENT` awaiting their PUBACK at once;
    the first failure raises :class:`aiomqtt.MqttError`."""
    pending = list(messages)
    for start in range(0, len(pending), _CONCURRENT):
        chunk = pending[start : start + _CONCURRENT]
        try:
            async with asyncio.TaskGroup() as publishing:
                for topic, payload in chunk:
                    publishing.create_task(client.publish(topic, payload, qos=1, retain=True))
        except* aiomqtt.MqttError as failed:
            raise failed.exceptions[0] from None


def _publishable(spaces: Mapping[str, Space]) -> dict[str, Space]:
    kept: dict[str, Space] = {}
    for space_id, space in spaces.items():
        problem = topic_problem(space_id)
        if problem is None:
            kept[space_id] = space
        else:
            log.warning(
                "MQTT out: space %r is not published: %s, so no topic can name it",
                space_id,
                problem,
            )
    return kept


def _version() -> str:
    try:
        return version("headcount")
    except PackageNotFoundError:
        return "unknown"


def _now() -> float:
    return asyncio.get_running_loop().time()
