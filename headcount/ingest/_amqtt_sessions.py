"""A fix for amqtt 0.12: a client is admitted before it may touch a session, and topic ACLs.

amqtt looks up the session of a CONNECT's client id *before* it authenticates the client:
with ``clean_session`` it deletes that session (and the QoS 1 messages queued in it), and
without, it takes the session over (disconnecting whoever holds it and overwriting its
username) and only then refuses the client. So anyone who can reach the broker could wipe
the service's persistent session, with the messages DPUs sent while the service was away, by
connecting with the service's client id and any password.

:class:`AdmittingBrokerHandler` asks the authentication plugins that offer it (``admit``,
see ``ServiceAuthPlugin``) right after the CONNECT is read, before amqtt touches any session,
and refuses the connection there (CONNACK "not authorised"). :func:`install` makes amqtt's
broker use it; like ``_amqtt_redelivery``, whose handler it extends, it reaches into amqtt's
broker (version pinned, <0.13) and affects only amqtt brokers in this process.

:class:`TopicAclPlugin` is amqtt's topic ACL plugin with the configuration headcount writes
(``publish_acl`` and ``subscribe_acl``, username to topic filters; no entry: nothing allowed).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import amqtt.broker
from amqtt.errors import MQTTError
from amqtt.mqtt.connack import NOT_AUTHORIZED, ConnackPacket
from amqtt.plugins.topic_checking import TopicAccessControlListPlugin
from amqtt.session import Session

from headcount.ingest._amqtt_redelivery import DurableBrokerHandler

__all__ = ["Admitter", "AdmittingBrokerHandler", "TopicAclPlugin", "install"]


@runtime_checkable
class Admitter(Protocol):
    """An authentication plugin that decides on a client from its CONNECT alone."""

    async def admit(self, session: Session) -> bool: ...


class AdmittingBrokerHandler(DurableBrokerHandler):
    """amqtt's broker handler (with headcount's redelivery fix) that refuses a client the
    plugins do not admit before amqtt looks up, deletes or takes over any session."""

    @classmethod
    async def init_from_connect(
        cls,
        reader: Any,
        writer: Any,
        plugins_manager: Any,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> tuple[AdmittingBrokerHandler, Session]:
        handler, session = await super().init_from_connect(reader, writer, plugins_manager, loop)
        for plugin in plugins_manager.plugins:
            if isinstance(plugin, Admitter) and not await plugin.admit(session):
                await ConnackPacket.build(0, NOT_AUTHORIZED).to_stream(writer)
                await writer.close()
                raise MQTTError(f"client {session.client_id!r} not authorised; connection refused")
        return handler, session


class TopicAclPlugin(TopicAccessControlListPlugin):  # type: ignore[misc]  # amqtt is untyped
    """Who may publish and subscribe where, by username (an anonymous client is
    ``anonymous``); a user without an entry may do neither."""

    @dataclass
    class Config:
        publish_acl: dict[str, list[str]] = field(default_factory=dict)
        subscribe_acl: dict[str, list[str]] = field(default_factory=dict)


def install() -> None:
    """Make amqtt's broker create :class:`AdmittingBrokerHandler` for its clients."""
    amqtt.broker.BrokerProtocolHandler = AdmittingBrokerHandler
