"""A fix for amqtt 0.12: a PUBLISH topic that is not valid UTF-8 is carried as published.

amqtt reads every MQTT string with ``amqtt.codecs_amqtt.decode_string``, which turns bytes that
are not UTF-8 into the ``repr`` of the bytes (``b'dpus/\\xff/traversals'``). For a PUBLISH
topic that loses the message silently: the broker acknowledges it to the publisher, but the
mangled topic matches no subscription under ``dpus/``, and since it is longer than the topic
read, amqtt also takes bytes of the payload for it. (Mosquitto refuses such a publish by
closing the connection, as MQTT 3.1.1 says a server must; the publisher then knows.)

:func:`install` makes amqtt read and write PUBLISH topics with ``surrogateescape``: the topic
keeps its exact bytes, matches subscriptions as its valid levels say (``dpus/#``), and reaches
the subscriber as published, where headcount refuses it into quarantine (``BAD_TOPIC``).
Like ``_amqtt_redelivery`` it reaches into amqtt, whose version is pinned (<0.13); it affects
only amqtt in this process.
"""

from __future__ import annotations

import asyncio
from struct import unpack
from typing import Any

from amqtt.codecs_amqtt import decode_packet_id, int_to_bytes, read_or_raise
from amqtt.mqtt.publish import PublishVariableHeader

__all__ = ["install"]


async def _from_stream(
    cls: type[PublishVariableHeader], reader: asyncio.StreamReader, fixed_header: Any
) -> PublishVariableHeader:
    length = unpack("!H", await read_or_raise(reader, 2))[0]
    raw = await read_or_raise(reader, length) if length else b""
    has_qos = (fixed_header.flags >> 1) & 0x03
    packet_id = await decode_packet_id(reader) if has_qos else None
    return cls(raw.decode("utf-8", "surrogateescape"), packet_id)


def _to_bytes(self: PublishVariableHeader) -> bytearray:
    topic: bytes = self.topic_name.encode("utf-8", "surrogateescape")
    out = bytearray(int_to_bytes(len(topic), 2))
    out.extend(topic)
    if self.packet_id is not None:
        out.extend(int_to_bytes(self.packet_id, 2))
    return out


def install() -> None:
    """Make amqtt carry PUBLISH topics byte for byte (see the module doc)."""
    PublishVariableHeader.from_stream = classmethod(_from_stream)
    PublishVariableHeader.to_bytes = _to_bytes
