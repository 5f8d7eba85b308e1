"""The MQTT side of ingest: a persistent subscription whose messages are acknowledged by hand.

Built on aiomqtt. aiomqtt acknowledges every QoS 1 message as soon as it arrives and has no
switch to stop that (aiomqtt issue #345, PR #346), nor does it tell whether the broker kept our
session; the paho client underneath it does both. Nor do they pass on every message: paho
decodes a PUBLISH topic as strict UTF-8 only when asked for it, and aiomqtt asks at once, so a
message whose topic is not valid UTF-8 raises in paho's callback and is lost, unacknowledged
(aiomqtt's topic checks would lose a few more). ``_hook_paho`` and ``_send_puback`` are the only
places in headcount that reach into aiomqtt's and paho's private attributes for all that.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import ssl
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import parse_qs, unquote, urlsplit

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from headcount.errors import HeadcountError
from headcount.ingest.tls import CA_PARAMETER, ClientTls, client_context, explain_connect_failure

DEFAULT_PORT = 1883
DEFAULT_TLS_PORT = 8883
#: Topic filters per SUBSCRIBE packet.
_FILTERS_PER_SUBSCRIBE = 500

__all__ = [
    "Backoff",
    "BrokerAddress",
    "BrokerUrlError",
    "Received",
    "Subscriber",
    "SubscriberError",
    "parse_broker_url",
    "tls_context",
]

logger = logging.getLogger(__name__)


class BrokerUrlError(HeadcountError, ValueError):
    """A broker URL that cannot be used; ``url`` is the offending text (without password)."""

    def __init__(self, url: str, problem: str) -> None:
        self.url = url
        super().__init__(f"bad MQTT broker URL {url!r}: {problem}")


class SubscriberError(HeadcountError):
    """The subscriber could not connect or subscribe; the MQTT error is ``__cause__``."""


@dataclass(frozen=True)
class BrokerAddress:
    """Where the broker is and who we are to it; ``tls`` ``None`` is plaintext."""

    host: str
    port: int = DEFAULT_PORT
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: ClientTls | None = None

    def __str__(self) -> str:
        """The address as a URL without the password, for logs and errors."""
        user = f"{self.username}@" if self.username else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{self.host}:{self.port}"

    def explain(self, error: BaseException) -> str:
        """``error``'s text, with what to change when it is about TLS."""
        hint = explain_connect_failure(
            error, tls=self.tls is not None, where=f"{self.host}:{self.port}"
        )
        return f"{error}; {hint}" if hint else str(error)


def tls_context(address: BrokerAddress) -> ssl.SSLContext | None:
    """The SSL context to connect to ``address`` with, ``None`` for plaintext."""
    return client_context(address.tls) if address.tls is not None else None


def parse_broker_url(url: str) -> BrokerAddress:
    """``mqtt://[user[:password]@]host[:port]`` (port 1883 by default) or the same with
    ``mqtts://`` for TLS (port 8883), trusting the system's CAs or, with ``?ca=FILE``, the
    certificates in FILE. User and password are percent-decoded."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise BrokerUrlError(_without_password(url), str(e)) from None
    shown = _without_password(url)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise BrokerUrlError(shown, "the scheme must be mqtt:// or mqtts:// (TLS)")
    if not parts.hostname:
        raise BrokerUrlError(shown, "no host")
    if parts.path not in ("", "/") or parts.fragment:
        raise BrokerUrlError(shown, "only mqtt[s]://[user[:password]@]host[:port] is understood")
    tls = ClientTls(_ca_file(shown, parts.query)) if parts.scheme == "mqtts" else None
    if tls is None and parts.query:
        raise BrokerUrlError(shown, f"?{CA_PARAMETER}= is for mqtts:// (TLS) URLs only")
    return BrokerAddress(
        host=parts.hostname,
        port=port if port is not None else DEFAULT_TLS_PORT if tls else DEFAULT_PORT,
        username=unquote(parts.username) if parts.username is not None else None,
        password=unquote(parts.password) if parts.password is not None else None,
        tls=tls,
    )


def _ca_file(shown: str, query: str) -> Path | None:
    try:
        parameters = parse_qs(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        parameters = {"": [query]}
    unknown = sorted(set(parameters) - {CA_PARAMETER})
    if unknown:
        raise BrokerUrlError(
            shown, f"unknown parameter {unknown[0]!r}: only ?{CA_PARAMETER}=FILE is understood"
        )
    values = parameters.get(CA_PARAMETER, [])
    if len(values) > 1 or (values and not values[0]):
        raise BrokerUrlError(shown, f"give ?{CA_PARAMETER}= once, with the path of a PEM file")
    return Path(values[0]) if values else None


def _without_password(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    userinfo, at, hostport = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return url
    return f"{scheme}://{userinfo.partition(':')[0]}:***@{hostport}"


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff between reconnection attempts: the n-th delay is drawn from
    ``[0, min(maximum, initial * factor**n)]`` ("full" jitter, so many clients cut off together
    do not come back together) or is exactly that bound (``jitter="none"``)."""

    initial: float = 0.5
    maximum: float = 30.0
    factor: float = 2.0
    jitter: Literal["full", "none"] = "full"

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum:
            raise ValueError(f"backoff needs 0 < initial <= maximum, got {self}")
        if self.factor < 1:
            raise ValueError(f"backoff factor must be at least 1, got {self.factor}")

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        """An endless series of delays in seconds."""
        uniform = (rng or random.Random()).uniform
        bound = self.initial
        while True:
            yield uniform(0.0, bound) if self.jitter == "full" else bound
            bound = min(self.maximum, bound * self.factor)


@dataclass(frozen=True)
class Received:
    """One message as it came from the broker. ``topic`` is its topic as published; bytes
    that are not UTF-8 come as lone surrogates (``surrogateescape``), so such a topic is
    still seen, and refused. ``mid`` is the packet id the broker chose for this delivery on
    this connection; ``qos`` the QoS it was delivered with."""

    topic: str
    payload: bytes
    mid: int
    qos: int


class Subscriber:
    """A subscription to ``topics`` that survives our downtime and the broker's.

    The session is persistent (``clean_session=False`` under the fixed ``client_id``), so QoS 1
    messages published while we are disconnected wait in the broker and arrive when we come
    back. Nothing is acknowledged until :meth:`ack` is called: a message received but not
    acknowledged when the connection drops (or when the process dies) is delivered again by
    the broker, so callers must treat every message as possibly seen before.

    Entering the context connects and subscribes (a new session) or resumes the broker's
    session, and raises :class:`SubscriberError` if that fails. After that, a lost connection
    is retried forever with ``reconnect`` backoff, and the topics are subscribed to again on
    every connection; a refused subscription is logged and the connection retried the same way.

    Limit: amqtt 0.12 (the embedded broker) drops an unacknowledged message when the
    connection drops or 5 s after sending it, instead of delivering it again.
    """

    def __init__(
        self,
        address: BrokerAddress,
        *,
        client_id: str,
        topics: Sequence[str],
        qos: int = 1,
        reconnect: Backoff | None = None,
        keepalive: int = 60,
    ) -> None:
        if qos not in (0, 1):
            raise ValueError(f"the subscriber handles QoS 0 and 1, not {qos}")
        if not topics:
            raise ValueError("a subscriber needs at least one topic")
        for topic in topics:
            aiomqtt.Wildcard(topic)  # raises ValueError on a malformed topic filter
        self.address = address
        self.client_id = client_id
        self.topics = tuple(topics)
        self.qos = qos
        self.reconnect = reconnect or Backoff()
        self.keepalive = keepalive
        self._tls = tls_context(address)
        self._client: aiomqtt.Client | None = None
        self._connection = AsyncExitStack()
        self._subscribing: asyncio.Task[None] | None = None
        # Messages of the current connection still to acknowledge, in order of receipt. An
        # OrderedDict finds its first in constant time; a dict whose first entries were
        # deleted scans past their slots each time (a fifth of the time ack took).
        self._unacked: OrderedDict[int, Received] = OrderedDict()
        self._acked: set[int] = set()
        #: aiomqtt's queue of the current connection (see ``_hook_paho``).
        self._inbox: asyncio.Queue[Any] = asyncio.Queue()

    async def __aenter__(self) -> Self:
        try:
            await self._connect()
        except aiomqtt.MqttError as e:
            raise SubscriberError(
                f"cannot connect to the MQTT broker {self.address} as {self.client_id!r}:"
                f" {self.address.explain(e)}"
            ) from e
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._client is not None:
            logger.info("leaving MQTT broker %s", self.address)
            await self._settle_subscription()
        await self._disconnect()

    async def _settle_subscription(self, timeout_s: float = 2.0) -> None:
        """Before a graceful leave, let a renewal of the subscription still in flight finish
        (briefly): cut off mid-way, Mosquitto was seen to keep a message whose PUBACK had been
        sent just before, and deliver it once more to the next connection."""
        subscribing = self._subscribing
        if subscribing is not None and not subscribing.done():
            await asyncio.wait([subscribing], timeout=timeout_s)

    async def messages(self) -> AsyncIterator[Received]:
        """Every message from now on, across reconnections; never ends by itself."""
        while True:
            yield await self._next()

    async def ack(self, received: Received) -> None:
        """Acknowledge ``received`` (send its PUBACK) once its content is safe.

        Acknowledge every QoS 1 message, the ones you reject too. MQTT 3.1.1 requires PUBACKs
        in the order the messages arrived, so acknowledge in that order; an acknowledgement
        given early is held back until every earlier message of the connection is
        acknowledged. Acknowledging a message of an earlier connection does nothing: the
        broker delivers it again.
        """
        if received.qos == 0 or self._unacked.get(received.mid) is not received:
            return
        self._acked.add(received.mid)
        unacked, acked = self._unacked, self._acked
        while unacked:
            mid = next(iter(unacked))
            if mid not in acked:
                return
            first = unacked.pop(mid)
            acked.discard(mid)
            self._send_puback(first)

    async def _next(self) -> Received:
        while True:
            client = self._client
            if client is None:
                await self._reconnect()
                continue
            try:
                # What _hook_paho's on_message put in aiomqtt's queue. aiomqtt's iterator
                # makes a task and waits on it for every message; taken straight from the
                # queue while it holds some, a burst of them is read in one go.
                inbox = self._inbox
                received: object = (
                    inbox.get_nowait() if inbox.qsize() else await anext(aiter(client.messages))
                )
            except aiomqtt.MqttError as e:
                logger.warning("lost MQTT connection to %s: %s; reconnecting", self.address, e)
                await self._disconnect()
                continue
            if not isinstance(received, Received):  # only _hook_paho's on_message fills it
                raise TypeError(f"the MQTT queue held {received!r}, not a Received message")
            if received.qos > 0:
                self._unacked[received.mid] = received
            return received

    async def _connect(self) -> None:
        client = aiomqtt.Client(
            self.address.host,
            self.address.port,
            username=self.address.username,
            password=self.address.password,
            identifier=self.client_id,
            clean_session=False,
            keepalive=self.keepalive,
            tls_context=self._tls,
        )
        session = _hook_paho(client)
        self._inbox = session.queue
        await self._connection.enter_async_context(client)
        self._client = client
        if session.present:
            # The broker kept our subscriptions; renew them without waiting for the SUBACK:
            # amqtt first sends the session's queued messages and waits for their PUBACKs,
            # which come only once the caller has the messages.
            self._subscribing = asyncio.create_task(
                self._resubscribe(client, self._connection),
                name=f"mqtt-resubscribe-{self.client_id}",
            )
        else:
            try:
                await self._subscribe(client)
            except aiomqtt.MqttError:
                await self._disconnect()
                raise
        logger.info(
            "connected to MQTT broker %s as %r (%s session)",
            self.address,
            self.client_id,
            "resumed" if session.present else "new",
        )

    async def _subscribe(self, client: aiomqtt.Client) -> None:
        # A shard subscribes to two topics per DPU: tens of thousands of filters, sent in
        # SUBSCRIBE packets of a size every broker takes.
        for start in range(0, len(self.topics), _FILTERS_PER_SUBSCRIBE):
            chunk = self.topics[start : start + _FILTERS_PER_SUBSCRIBE]
            granted = await client.subscribe([(topic, self.qos) for topic in chunk])
            verdicts = [_refused(code) for code in granted]
            refused = [t for t, bad in zip(chunk, verdicts, strict=False) if bad]
            if refused:
                shown = ", ".join(refused[:3]) + (", ..." if len(refused) > 3 else "")
                raise aiomqtt.MqttError(
                    f"the broker refused the subscription to {len(refused)} topic(s): {shown}"
                )

    async def _resubscribe(self, client: aiomqtt.Client, connection: AsyncExitStack) -> None:
        try:
            await self._subscribe(client)
        except aiomqtt.MqttError as e:
            logger.error("subscribing at %s failed: %s", self.address, e)
            await connection.aclose()  # the reader sees the connection end and reconnects

    async def _reconnect(self) -> None:
        for delay in self.reconnect.delays():
            await asyncio.sleep(delay)
            try:
                await self._connect()
            except aiomqtt.MqttError as e:
                logger.debug("reconnecting to %s failed: %s", self.address, self.address.explain(e))
            else:
                return

    async def _disconnect(self) -> None:
        """Leave the current connection, gracefully if it is still up. Messages not yet
        acknowledged stay with the broker."""
        self._client = None
        self._unacked.clear()
        self._acked.clear()
        subscribing, self._subscribing = self._subscribing, None
        if subscribing is not None:
            subscribing.cancel()
        connection, self._connection = self._connection, AsyncExitStack()
        try:
            await connection.aclose()
        except aiomqtt.MqttError as e:
            logger.debug("closing the MQTT connection to %s: %s", self.address, e)

    def _send_puback(self, received: Received) -> None:
        client = self._client
        if client is None:
            return
        # Private: aiomqtt has no manual acknowledgement (see _hook_paho).
        rc = client._client.ack(received.mid, received.qos)
        if rc != paho.MQTT_ERR_SUCCESS:
            logger.debug("PUBACK %d not sent (%s); the broker will redeliver", received.mid, rc)


@dataclass
class _Session:
    #: aiomqtt's queue, which ``on_message`` fills.
    queue: asyncio.Queue[Any]
    present: bool = False


def _hook_paho(client: aiomqtt.Client) -> _Session:
    """Do on aiomqtt's private paho client what aiomqtt does not offer: stop acknowledging on
    receipt (before any message can arrive), record the CONNACK's session-present flag, and
    pass on every message as a :class:`Received` into aiomqtt's queue, whatever its topic."""
    paho_client = client._client
    paho_client.manual_ack_set(True)
    queue: asyncio.Queue[Any] = client._queue  # aiomqtt's; we put Received, not its Message
    session = _Session(queue)

    def on_message(c: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        # Instead of aiomqtt's on_message, which reads ``message.topic``: paho decodes it as
        # strict UTF-8 there, and the exception would lose the message (see the module doc).
        try:
            topic = message.topic
        except UnicodeDecodeError:
            topic = message._topic.decode("utf-8", "surrogateescape")
        queue.put_nowait(Received(topic, bytes(message.payload), message.mid, message.qos))

    paho_client.on_message = on_message
    aiomqtt_on_connect = client._on_connect

    def on_connect(
        c: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None = None,
    ) -> None:
        session.present = flags.session_present
        sock = c._sock
        if type(sock) is socket.socket:  # plain TCP: not TLS, not a WebSocket
            c._sock = _ReadAhead(sock)  # socket-like, with pending() as an SSL socket has
        aiomqtt_on_connect(c, userdata, flags, reason_code, properties)

    paho_client.on_connect = on_connect
    return session


#: Bytes a read ahead takes from the connection at most.
_READ_AHEAD = 1 << 16


class _ReadAhead:
    """A plain TCP connection as paho reads it, with reads ahead. paho reads each packet in
    three ``recv`` calls (its first byte, its length, its body), each a system call: a sixth
    of the service's time under single-event messages (cProfile). This reads what the
    connection holds, up to 64 KiB, in one call and hands it out as asked. ``pending()``, as
    an SSL socket has it, tells aiomqtt's reader that packets may wait here while the socket
    has nothing more to read: it calls paho again until they are taken. Everything else is
    the socket's."""

    __slots__ = ("_data", "_pos", "_sock")

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._data = b""
        self._pos = 0

    def recv(self, bufsize: int) -> bytes:
        data, pos = self._data, self._pos
        if pos >= len(data):
            data = self._sock.recv(max(bufsize, _READ_AHEAD))  # b"": the connection closed
            if len(data) <= bufsize:
                self._data, self._pos = b"", 0
                return data
            self._data, pos = data, 0
        chunk = data[pos : pos + bufsize]
        self._pos = pos + len(chunk)
        return chunk

    def pending(self) -> int:
        """Bytes read from the connection and not yet handed out."""
        return len(self._data) - self._pos

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def _refused(code: int | ReasonCode) -> bool:
    return (code.value if isinstance(code, ReasonCode) else code) >= 0x80
