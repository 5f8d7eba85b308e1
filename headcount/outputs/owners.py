"""Live counts of the spaces other shards own, from the states their owners publish.

In a sharded deployment (``headcount serve --shard I/N``) each process runs the actors of its
own spaces only, and publishes their states, retained, on ``headcount/spaces/{id}/state``
(``outputs.mqtt``, with the entrances and exits behind each count). Every process follows those
topics (:class:`StateFollower`, a clean session of its own), so it answers the live count of any
space from memory: its own actors for its spaces, the newest state its owner published for the
others (:class:`ShardLive`). A space with no state known yet is answered from the shared log,
exactly, by the caller (``live_state`` returns ``None``).

Why the broker rather than asking the owner over HTTP: the retained topics are already there,
a standby that takes a shard over publishes on the same topics (no list of peers to keep, no
tokens between processes), a live answer stays a dictionary lookup, and one process's outage
never slows another's answers. The price: a followed state lags its owner by up to the
owner's ``--publish-interval`` (1 s by default) plus the broker's delivery.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

import aiomqtt

from headcount.actors import ActorSystem, Readiness
from headcount.clock import now_ms
from headcount.domain.events import Reset
from headcount.domain.fold import SpaceState, advance
from headcount.domain.shards import Shard, ShardStatus
from headcount.domain.timefmt import parse_iso
from headcount.domain.topology import Topology
from headcount.errors import ConflictError, InvalidTimestampError
from headcount.eventstore.records import StoredReset
from headcount.ingest.mqtt import Backoff, BrokerAddress, tls_context
from headcount.outputs.payloads import Topics

__all__ = ["FollowedStates", "ShardLive", "StateFollower"]

log = logging.getLogger(__name__)

#: The largest state payload read (a real one is about 100 bytes).
_MAX_STATE = 1024


class FollowedStates:
    """The newest state published for each space of ``topology`` (none of the others)."""

    def __init__(self, topology: Topology, topics: Topics | None = None) -> None:
        self.topology = topology
        self._prefix = f"{(topics or Topics()).root}/spaces/"
        self._states: dict[str, SpaceState] = {}
        self.refused = 0
        #: States older than the one kept (redelivered), left aside.
        self.stale = 0

    @property
    def subscription(self) -> str:
        return f"{self._prefix}+/state"

    def get(self, space_id: str) -> SpaceState | None:
        return self._states.get(space_id)

    def apply(self, topic: str, payload: bytes) -> bool:
        """Take one published state; False (and nothing kept) for a topic or payload that is
        not a state of a known space with its entrances and exits."""
        space_id = topic.removeprefix(self._prefix).removesuffix("/state")
        state = _parse(payload) if space_id in self.topology.spaces else None
        if state is None:
            self.refused += 1
            return False
        kept = self._states.get(space_id)
        if kept is not None and _progress(state) < _progress(kept):
            # An older state delivered again (a broker may redeliver at QoS 1 after a later
            # one arrived): the one kept is newer.
            self.stale += 1
            return True
        self._states[space_id] = state
        return True


def _progress(state: SpaceState) -> tuple[int, int]:
    """How far the owner's fold had gone: the traversals folded (entrances and exits only
    grow, resets and late events included), then the time of the state."""
    return state.entrances + state.exits, state.as_of or 0


def _parse(payload: bytes) -> SpaceState | None:
    if len(payload) > _MAX_STATE:
        return None
    try:
        body = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(body, dict):
        return None
    figures = [body.get(key) for key in ("count", "entrances", "exits")]
    ts = body.get("ts")
    if not all(type(f) is int and abs(f) < 2**53 for f in figures) or not isinstance(ts, str):
        return None
    try:
        as_of = parse_iso(ts)
    except InvalidTimestampError:
        return None
    count, entrances, exits = (int(f) for f in figures if isinstance(f, int))
    return SpaceState(as_of, count, entrances, exits)


class StateFollower:
    """Follows every space's retained state on the broker into ``states``: a clean session
    (the retained states arrive at each subscription, nothing needs queueing), reconnecting
    with ``reconnect`` backoff forever."""

    def __init__(
        self,
        address: BrokerAddress,
        states: FollowedStates,
        *,
        client_id: str,
        reconnect: Backoff | None = None,
    ) -> None:
        self.address = address
        self.states = states
        self.client_id = client_id
        self._reconnect = reconnect or Backoff()
        self.connected = asyncio.Event()

    async def run(self) -> None:
        """Follow until cancelled."""
        delays = self._reconnect.delays()
        while True:
            try:
                async with aiomqtt.Client(
                    self.address.host,
                    self.address.port,
                    username=self.address.username,
                    password=self.address.password,
                    identifier=self.client_id,
                    clean_session=True,
                    tls_context=tls_context(self.address),
                ) as client:
                    await client.subscribe(self.states.subscription, qos=1)
                    self.connected.set()
                    delays = self._reconnect.delays()
                    log.info("following the shards' states at %s", self.address)
                    async for message in client.messages:
                        payload = message.payload
                        if isinstance(payload, bytes | bytearray):
                            self.states.apply(str(message.topic), bytes(payload))
            except aiomqtt.MqttError as e:
                self.connected.clear()
                log.warning("following the shards' states at %s: %s", self.address, e)
            await asyncio.sleep(next(delays))


class ShardLive:
    """The live counts this process answers (``LiveCounts``) and the resets it takes
    (``ResetTaker``): its own spaces from its actors once it owns its shard, the others (and
    its own while it is a standby) from ``followed`` states."""

    def __init__(
        self,
        system: ActorSystem,
        shard: Shard,
        followed: FollowedStates | None,
        *,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.system = system
        self.shard = shard
        self.followed = followed
        self.owner = False
        self._clock = clock

    @property
    def topology(self) -> Topology:
        return self.system.topology

    def take(self) -> None:
        """This process now owns its shard (it holds the shard's lock)."""
        self.owner = True

    def status(self) -> ShardStatus:
        return ShardStatus(self.shard, "owner" if self.owner else "standby")

    def live_state(self, space_id: str) -> SpaceState | None:
        if self.owner:
            state = self.system.live_state(space_id)
            if state is not None:
                return state
        else:
            self.topology.space(space_id)  # raises UnknownSpaceError
        followed = None if self.followed is None else self.followed.get(space_id)
        if followed is None:
            return None
        now = self._clock()
        if followed.as_of is not None and now < followed.as_of:
            return followed
        return advance(self.topology.space(space_id), followed, now)

    def readiness(self) -> Readiness:
        return self.system.readiness() if self.owner else Readiness(0, (), 0)

    def mailbox_depth(self) -> int:
        return self.system.mailbox_depth() if self.owner else 0

    async def reset(self, reset: Reset) -> StoredReset:
        """A reset of a space this process counts; another shard's space is refused (its
        owner must fold it into its live count, so it is made there)."""
        self.topology.space(reset.space_id)
        if not (self.owner and reset.space_id in self.system.actors):
            index = self.shard.owner_of(reset.space_id)
            raise ConflictError(
                f"space {reset.space_id!r} is counted by shard {index}/{self.shard.count},"
                f" not by this process ({self.status().describe()}); make the reset through"
                " that shard's process"
            )
        return await self.system.reset(reset)
