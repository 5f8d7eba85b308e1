"""Watching a broker in tests: a real aiomqtt subscriber reading in the background, and
the Mosquitto and topics the tests of MQTT out share (fixtures in conftest.py)."""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import aiomqtt
import pytest

from headcount.ingest.mqtt import Backoff

HOST = "127.0.0.1"
FAST = Backoff(initial=0.05, maximum=0.2, jitter="none")


@dataclass
class Seen:
    messages: list[tuple[str, bytes, bool]] = field(default_factory=list)

    def on(self, topic: str) -> list[bytes]:
        return [payload for t, payload, _ in self.messages if t == topic]

    def counts(self, topic: str) -> list[int]:
        """The counts published on ``topic``, a repeat of the same one once: QoS 1 is at
        least once (a state the broker took whose PUBACK the stop cut off is sent again)."""
        counts = [json.loads(payload)["count"] for payload in self.on(topic)]
        return [count for count, _ in itertools.groupby(counts)]


@asynccontextmanager
async def watching(port: int, topic_filter: str) -> AsyncIterator[Seen]:
    """A subscriber to ``topic_filter`` (QoS 1) reading in the background."""
    seen = Seen()
    async with aiomqtt.Client(HOST, port, identifier=f"watch-{uuid.uuid4().hex[:8]}") as client:
        await client.subscribe(topic_filter, qos=1)

        async def read() -> None:
            async for message in client.messages:
                payload = message.payload
                assert isinstance(payload, bytes)
                seen.messages.append((message.topic.value, payload, message.retain))

        reader = asyncio.create_task(read())
        try:
            yield seen
        finally:
            reader.cancel()
            with pytest.raises(asyncio.CancelledError):
                await reader
