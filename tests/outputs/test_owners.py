"""Live counts of other shards' spaces from the states their owners publish, and what a process
answers while it is a standby."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from headcount.actors import ActorSystem
from headcount.domain.events import Reset, Traversal
from headcount.domain.fold import SpaceState
from headcount.domain.shards import Shard, ShardStatus
from headcount.domain.timefmt import format_ms
from headcount.domain.topology import Topology
from headcount.errors import ConflictError, UnknownSpaceError
from headcount.eventstore.store import EventStore
from headcount.history import History
from headcount.ingest.mqtt import BrokerAddress
from headcount.outputs.mqtt import MqttOut
from headcount.outputs.owners import FollowedStates, ShardLive, StateFollower
from headcount.outputs.payloads import Topics, state_payload
from tests.outputs.watch import FAST, watching
from tests.polling import eventually

SEED_TOPOLOGY = Path(__file__).resolve().parents[2] / "examples" / "seed" / "topology.toml"
SEED = Topology.from_toml(SEED_TOPOLOGY.read_text())
NOW = 1_700_000_000_000
#: The seed's A is shard 1 of 2, B shard 0 (tests/domain/test_shards.py pins it).
SHARD_OF_A = Shard(1, 2)


def published(space_id: str, count: int, ts: int, entrances: int, exits: int) -> bytes:
    return state_payload(SEED.space(space_id), count, ts, entrances=entrances, exits=exits)


def test_a_published_state_is_followed() -> None:
    followed = FollowedStates(SEED)
    assert followed.subscription == "headcount/spaces/+/state"
    assert followed.apply("headcount/spaces/B/state", published("B", 3, NOW, 5, 2))
    assert followed.get("B") == SpaceState(NOW, 3, 5, 2)
    assert followed.get("A") is None


def test_an_older_state_delivered_again_does_not_replace_a_newer_one() -> None:
    """A broker may deliver a QoS 1 state again after a newer one (NATS redelivers what was
    not acknowledged in time): the state furthest along the owner's fold is kept."""
    followed = FollowedStates(SEED)
    topic = "headcount/spaces/B/state"
    assert followed.apply(topic, published("B", 3, NOW, 5, 2))
    assert followed.apply(topic, published("B", 4, NOW + 1000, 6, 2))
    assert followed.apply(topic, published("B", 3, NOW, 5, 2))  # the first, again
    assert followed.get("B") == SpaceState(NOW + 1000, 4, 6, 2)
    assert (followed.stale, followed.refused) == (1, 0)
    # A late event folded (more traversals, an earlier time) and a reset (the same
    # traversals, a later time) are both newer than what they follow.
    assert followed.apply(topic, published("B", 5, NOW + 500, 7, 2))
    assert followed.get("B") == SpaceState(NOW + 500, 5, 7, 2)
    assert followed.apply(topic, published("B", 0, NOW + 2000, 7, 2))
    assert followed.get("B") == SpaceState(NOW + 2000, 0, 7, 2)


@pytest.mark.parametrize(
    ("topic", "payload"),
    [
        ("headcount/spaces/Q/state", published("B", 3, NOW, 5, 2)),  # no such space
        ("headcount/spaces/B/state", state_payload(SEED.space("B"), 3, NOW)),  # no totals
        ("headcount/spaces/B/state", b"\xff\xfe"),
        ("headcount/spaces/B/state", b"[1, 2]"),
        ("headcount/spaces/B/state", b'{"count": "3", "entrances": 1, "exits": 0, "ts": "x"}'),
        ("headcount/spaces/B/state", b'{"count": 3, "entrances": 1, "exits": 0, "ts": "x"}'),
        ("headcount/spaces/B/state", b'{"count": 3.5, "entrances": 1, "exits": 0}'),
        ("headcount/spaces/B/state", b'{"count": true, "entrances": 1, "exits": 0}'),
        ("headcount/spaces/B/state", b" " * 5000),
    ],
    ids=["unknown", "no-totals", "bytes", "list", "string", "bad-ts", "float", "bool", "huge"],
)
def test_anything_else_is_refused_and_changes_nothing(topic: str, payload: bytes) -> None:
    followed = FollowedStates(SEED)
    followed.apply("headcount/spaces/B/state", published("B", 1, NOW, 1, 0))
    assert not followed.apply(topic, payload)
    assert followed.get("B") == SpaceState(NOW, 1, 1, 0)
    assert followed.refused == 1


@given(st.binary(max_size=300), st.text(max_size=40))
def test_no_payload_or_topic_breaks_the_follower(payload: bytes, topic: str) -> None:
    followed = FollowedStates(SEED)
    accepted = followed.apply(topic, payload)
    assert accepted == any(followed.get(s) is not None for s in SEED.spaces)


@given(
    st.integers(min_value=0, max_value=10**6),
    st.integers(min_value=0, max_value=10**6),
    st.integers(min_value=0, max_value=10**6),
)
def test_a_state_round_trips(count: int, entrances: int, exits: int) -> None:
    followed = FollowedStates(SEED)
    assert followed.apply("headcount/spaces/A/state", published("A", count, NOW, entrances, exits))
    assert followed.get("A") == SpaceState(NOW, count, entrances, exits)
    body = json.loads(published("A", count, NOW, entrances, exits))
    assert body["ts"] == format_ms(NOW)


@pytest.fixture
async def system(store: EventStore) -> AsyncIterator[ActorSystem]:
    history = History(store, SEED)
    await store.log.append([Traversal("283", 1, NOW - 5000, 1), Traversal("283", 2, NOW - 4000, 1)])
    system = ActorSystem(history, space_ids=SHARD_OF_A.spaces(SEED), clock=lambda: NOW)
    async with system.running():
        yield system


async def test_a_standby_answers_from_followed_states_then_its_actors(
    system: ActorSystem,
) -> None:
    followed = FollowedStates(SEED)
    live = ShardLive(system, SHARD_OF_A, followed, clock=lambda: NOW)
    assert live.status() == ShardStatus(SHARD_OF_A, "standby")
    assert live.readiness().spaces == 0
    assert live.live_state("A") is None  # nothing known: the caller asks the log
    followed.apply("headcount/spaces/A/state", published("A", 1, NOW - 6000, 1, 0))
    followed.apply("headcount/spaces/B/state", published("B", 4, NOW - 6000, 4, 0))
    assert live.live_state("A") == SpaceState(NOW, 1, 1, 0)  # the old owner's last word
    live.take()
    assert live.status() == ShardStatus(SHARD_OF_A, "owner")
    assert live.readiness().spaces == 1
    assert live.live_state("A") == SpaceState(NOW, 2, 2, 0)  # its own actor now
    assert live.live_state("B") == SpaceState(NOW, 4, 4, 0)  # B's owner's
    with pytest.raises(UnknownSpaceError):
        live.live_state("Q")


async def test_a_reset_of_another_shards_space_is_refused_with_where_to_go(
    system: ActorSystem,
) -> None:
    live = ShardLive(system, SHARD_OF_A, FollowedStates(SEED), clock=lambda: NOW)
    with pytest.raises(ConflictError, match=r"space 'A' is counted by shard 1/2.*standby"):
        await live.reset(Reset("A", NOW, 0, "api"))
    live.take()
    with pytest.raises(ConflictError, match=r"space 'B' is counted by shard 0/2"):
        await live.reset(Reset("B", NOW, 0, "api"))
    stored = await live.reset(Reset("A", NOW, 0, "api"))
    assert stored.count == 0
    assert live.live_state("A") == SpaceState(NOW, 0, 2, 0)


async def test_the_follower_reads_retained_states_and_their_changes(
    mosquitto: int, topics: Topics
) -> None:
    address = BrokerAddress("127.0.0.1", mosquitto)
    async with aiomqtt.Client("127.0.0.1", mosquitto) as owner:
        await owner.publish(topics.state("B"), published("B", 2, NOW, 2, 0), qos=1, retain=True)
        followed = FollowedStates(SEED, topics)
        follower = StateFollower(address, followed, client_id=f"{topics.root}-follower")
        task = asyncio.create_task(follower.run())
        try:
            await eventually(lambda: followed.get("B") == SpaceState(NOW, 2, 2, 0))
            await owner.publish(topics.state("B"), published("B", 1, NOW + 1, 2, 1), qos=1)
            await owner.publish(topics.state("B"), b"not a state", qos=1)
            await eventually(lambda: followed.get("B") == SpaceState(NOW + 1, 1, 2, 1))
            await eventually(lambda: followed.refused == 1)
        finally:
            task.cancel()
            await asyncio.wait([task])
            await owner.publish(topics.state("B"), b"", qos=1, retain=True)


async def test_a_shard_publishes_its_own_spaces_with_its_own_availability(
    mosquitto: int, topics: Topics
) -> None:
    shard_topics = Topics(root=topics.root, discovery=topics.discovery, shard=1)
    assert shard_topics.status == f"{topics.root}/shards/1/status"
    out = MqttOut(
        BrokerAddress("127.0.0.1", mosquitto),
        SEED,
        client_id=f"{topics.root}-out",
        topics=shard_topics,
        homeassistant=True,
        reconnect=FAST,
        space_ids=SHARD_OF_A.spaces(SEED),
    )
    async with watching(mosquitto, "#") as seen:
        task = asyncio.create_task(out.run())
        try:
            out.offer("A", NOW, 2, entrances=3, exits=1)
            out.offer("B", NOW, 5, entrances=5, exits=0)  # shard 0's: not published here
            await eventually(lambda: bool(seen.on(shard_topics.state("A"))))
            await eventually(lambda: bool(seen.on(shard_topics.status)))
        finally:
            task.cancel()
            await asyncio.wait([task])
    assert json.loads(seen.on(shard_topics.state("A"))[-1])["entrances"] == 3
    assert not seen.on(shard_topics.state("B"))
    configs = [json.loads(p) for t, p, _ in seen.messages if t.startswith(topics.discovery)]
    assert configs
    assert {c["availability_topic"] for c in configs} == {shard_topics.status}
    assert all("headcount_A" in c["unique_id"] for c in configs)
