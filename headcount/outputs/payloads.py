"""What the service tells the world about its spaces, as bytes on topics: pure, no I/O.

The state of a space (``{root}/spaces/{id}/state``, retained), its capacity alerts
(``{root}/spaces/{id}/alerts``), the service's availability (``{root}/status``: ``online`` /
``offline``, retained, ``offline`` also as the MQTT last will) and the Home Assistant MQTT
discovery configs that make each space a sensor there without any configuration.

Home Assistant has no sensor device class for a number of people (``occupancy`` is a class of
binary sensors), so each space is two entities of one device: a ``measurement`` sensor of
the count (unit ``people``, capacity and utilization as attributes) and an ``occupancy``
binary sensor that is on while anyone is in.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Protocol

from headcount.domain.timefmt import format_ms
from headcount.domain.topology import Space

__all__ = [
    "AVAILABLE",
    "NOT_AVAILABLE",
    "CountLike",
    "Topics",
    "discovery_configs",
    "state_payload",
    "topic_problem",
]

AVAILABLE = "online"
NOT_AVAILABLE = "offline"
_HA_ID = re.compile(r"[A-Za-z0-9_-]+")
_NOT_IN_TOPIC_LEVEL = ("/", "+", "#", "\x00")


class CountLike(Protocol):
    """A space's count at a moment: what the change feed publishes (``Change``)."""

    @property
    def space_id(self) -> str: ...

    @property
    def ts(self) -> int: ...

    @property
    def count(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Topics:
    """Where things are published: ``root`` for the service's own topics, ``discovery`` for
    Home Assistant's (its default discovery prefix). ``shard``: the index of the shard a
    process of a sharded deployment owns, whose availability is its own
    (``{root}/shards/{shard}/status``): one shard stopping leaves the others' spaces available."""

    root: str = "headcount"
    discovery: str = "homeassistant"
    shard: int | None = None

    @property
    def status(self) -> str:
        if self.shard is not None:
            return f"{self.root}/shards/{self.shard}/status"
        return f"{self.root}/status"

    def state(self, space_id: str) -> str:
        return f"{self.root}/spaces/{space_id}/state"

    def alerts(self, space_id: str) -> str:
        return f"{self.root}/spaces/{space_id}/alerts"

    def discovery_config(self, component: str, space_id: str) -> str:
        return f"{self.discovery}/{component}/{ha_id(space_id)}/config"


def topic_problem(space_id: str) -> str | None:
    """Why ``space_id`` cannot be one level of an MQTT topic name, or ``None`` if it can."""
    if not space_id:
        return "it is empty"
    if any(char in space_id for char in _NOT_IN_TOPIC_LEVEL):
        return "it holds '/', '+', '#' or NUL"
    try:
        space_id.encode("utf-8")
    except UnicodeEncodeError:
        return "it is not valid UTF-8"
    return None


def ha_id(space_id: str) -> str:
    """``headcount_{id}``, the space's object id in Home Assistant. Home Assistant allows
    only ``[A-Za-z0-9_-]`` there: an id with other characters is replaced by those it has,
    plus a digest of the whole id, so two spaces never share one."""
    if _HA_ID.fullmatch(space_id):
        return f"headcount_{space_id}"
    kept = "".join(char if _HA_ID.fullmatch(char) else "_" for char in space_id)[:40]
    digest = hashlib.sha256(space_id.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    return f"headcount_{kept}_{digest}"


def state_payload(
    space: Space, count: int, ts: int, *, entrances: int | None = None, exits: int | None = None
) -> bytes:
    """``{"count", "ts", "capacity", "utilization"}`` as JSON: ``ts`` ISO-8601 UTC (the
    time of the count), ``utilization`` ``count / capacity`` (``null`` without a capacity
    above 0); with ``entrances`` and ``exits`` when given (the totals behind the count, which
    the other shards of a deployment answer from: ``outputs.owners``)."""
    capacity = space.capacity
    utilization = round(count / capacity, 4) if capacity else None
    body: dict[str, object] = {
        "count": count,
        "ts": format_ms(ts),
        "capacity": capacity,
        "utilization": utilization,
    }
    if entrances is not None and exits is not None:
        body["entrances"] = entrances
        body["exits"] = exits
    return json.dumps(body, separators=(",", ":")).encode()


def discovery_configs(space: Space, topics: Topics, version: str) -> dict[str, bytes]:
    """The retained Home Assistant discovery configs of ``space``, by topic."""
    object_id = ha_id(space.id)
    state = topics.state(space.id)
    device = {
        "identifiers": [object_id],
        "name": space.name or space.id,
        "manufacturer": "headcount",
        "model": "people count of a space",
        "sw_version": version,
    }
    common = {
        "state_topic": state,
        "availability_topic": topics.status,
        "payload_available": AVAILABLE,
        "payload_not_available": NOT_AVAILABLE,
        "qos": 1,
        "device": device,
    }
    count = {
        **common,
        "name": "People",
        "unique_id": f"{object_id}_count",
        "value_template": "{{ value_json.count }}",
        "unit_of_measurement": "people",
        "state_class": "measurement",
        "icon": "mdi:account-group",
        "json_attributes_topic": state,  # ts, capacity and utilization as attributes
    }
    occupied = {
        **common,
        "name": "Occupied",
        "unique_id": f"{object_id}_occupied",
        "device_class": "occupancy",
        "value_template": "{{ 'ON' if value_json.count > 0 else 'OFF' }}",
    }
    return {
        topics.discovery_config("sensor", space.id): _json(count),
        topics.discovery_config("binary_sensor", space.id): _json(occupied),
    }


def _json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
