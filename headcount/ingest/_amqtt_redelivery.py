"""A fix for amqtt 0.12: keep a QoS 1 message in flight until its subscriber acknowledges it.

MQTT 3.1.1 wants a QoS 1 message that a persistent session has not acknowledged sent again
when that session resumes [MQTT-4.4.0-1], and amqtt does resend what a session holds in flight
when it reconnects. But its broker-side flow forgets each message after 5 s without a PUBACK,
or as soon as the connection drops (``session.inflight_out.pop`` in a ``finally``), so a
subscriber that dies before acknowledging (headcount acknowledges after commit, and may be
killed at any instant) never gets those messages again, and a subscriber that is slower than
5 s loses them.

:class:`DurableBrokerHandler` is amqtt's broker protocol handler with that one flow changed: the
message leaves the session only when its PUBACK arrives, on this connection or after the session
resumed. (amqtt still stops waiting for the PUBACK of a message it resent on resumption after
10 s; such a message stays in flight and comes again at the next resumption, a duplicate the
store's unique key absorbs.)

:func:`install` makes amqtt's broker use it; ``EmbeddedBroker`` calls it, and it affects only
amqtt brokers in this process. The amqtt version is pinned (<0.13) because this reaches into
its handler; ``tests/ingest/test_mqtt.py`` and the ``kill -9`` test in ``tests/test_e2e.py``
show the behaviour on amqtt and Mosquitto alike.
"""

from __future__ import annotations

import asyncio
from typing import Any

import amqtt.broker
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.mqtt.puback import PubackPacket
from amqtt.session import OUTGOING, ApplicationMessage


class DurableBrokerHandler(BrokerProtocolHandler):  # type: ignore[misc]  # amqtt is untyped
    """amqtt's broker handler, keeping unacknowledged QoS 1 messages for the session."""

    async def _handle_qos1_message_flow(self, app_message: ApplicationMessage) -> None:
        if app_message.direction != OUTGOING:
            await super()._handle_qos1_message_flow(app_message)
            return
        session: Any = self.session
        packet_id = app_message.packet_id
        if packet_id is None or app_message.puback_packet is not None or session is None:
            await super()._handle_qos1_message_flow(app_message)  # amqtt's own errors
            return
        session.inflight_out.setdefault(packet_id, app_message)
        retry = app_message.publish_packet is not None
        publish = app_message.build_publish_packet(dup=retry)
        await self._send_packet(publish)
        app_message.publish_packet = publish
        waiter: asyncio.Future[PubackPacket] = asyncio.get_running_loop().create_future()
        self._puback_waiters[packet_id] = waiter
        try:
            # No time limit: MQTT sets none. If the connection drops first, this is cancelled
            # and the message stays in flight, to be sent again when the session resumes.
            app_message.puback_packet = await waiter
        finally:
            self._puback_waiters.pop(packet_id, None)
        session.inflight_out.pop(packet_id, None)


def install() -> None:
    """Make amqtt's broker create :class:`DurableBrokerHandler` for its clients."""
    amqtt.broker.BrokerProtocolHandler = DurableBrokerHandler
