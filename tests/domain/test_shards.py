"""Which shard owns a space: a stable hash, pinned so that it can never change silently."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from headcount.domain.shards import ONE_SHARD, Shard, ShardSpecError, shard_dpus, shard_of
from headcount.domain.topology import Topology

#: Values computed once and kept: a deployment's spaces stay on their shards across releases.
PINNED = [
    ("A", [0, 1, 0, 3, 65]),
    ("B", [0, 0, 2, 2, 420]),
    ("lobby", [0, 0, 2, 3, 626]),
    ("floor-2", [0, 1, 2, 3, 97]),
    ("é", [0, 1, 0, 3, 51]),
    ("space-0001", [0, 0, 0, 2, 816]),
]
COUNTS = [1, 2, 3, 7, 1000]


@pytest.mark.parametrize(("space_id", "expected"), PINNED, ids=[p[0] for p in PINNED])
def test_pinned_values(space_id: str, expected: list[int]) -> None:
    assert [shard_of(space_id, n) for n in COUNTS] == expected


@given(st.text(max_size=40), st.integers(min_value=1, max_value=9999))
def test_the_hash_is_the_documented_one_and_exactly_one_shard_owns_each_space(
    space_id: str, count: int
) -> None:
    digest = hashlib.sha256(space_id.encode("utf-8", "surrogatepass")).digest()
    index = shard_of(space_id, count)
    assert index == int.from_bytes(digest[:8], "big") % count
    owners = [i for i in range(min(count, 50)) if Shard(i, count).owns(space_id)]
    assert owners == ([index] if index < 50 else [])
    assert Shard(0, count).owner_of(space_id) == index
    assert ONE_SHARD.owns(space_id)


@given(st.integers(min_value=1, max_value=9999), st.data())
def test_a_spec_round_trips(count: int, data: st.DataObject) -> None:
    index = data.draw(st.integers(min_value=0, max_value=count - 1))
    assert Shard.parse(f"{index}/{count}") == Shard(index, count)
    assert str(Shard(index, count)) == f"{index}/{count}"


@pytest.mark.parametrize(
    "text", ["3/3", "-1/2", "1", "1/0", "a/b", "1/2/3", "", "0/10000"], ids=repr
)
def test_a_bad_spec_says_what_a_shard_is(text: str) -> None:
    with pytest.raises(ShardSpecError, match=r"0/3"):
        Shard.parse(text)


SHARED = Topology.from_toml("""
[[spaces]]
id = "A"
name = "A"
[[spaces]]
id = "B"
name = "B"
[[doorways]]
id = "X"
name = "X"
links = [{space = "A", sensor_placement = 1}]
[[doorways]]
id = "Z"
name = "Z"
links = [{space = "A", sensor_placement = 1}, {space = "B", sensor_placement = -1}]
[[doorways]]
id = "Y"
name = "Y"
links = [{space = "B", sensor_placement = 1}]
[[assignments]]
dpu = "283"
doorway = "X"
valid_from = "2018-01-01T00:00:00Z"
valid_until = "2018-03-01T00:00:00Z"
[[assignments]]
dpu = "283"
doorway = "Y"
valid_from = "2018-03-01T00:00:00Z"
[[assignments]]
dpu = "423"
doorway = "Z"
valid_from = "2018-01-01T00:00:00Z"
[[assignments]]
dpu = "77"
doorway = "Y"
valid_from = "2018-01-01T00:00:00Z"
""")


def test_a_shard_subscribes_to_every_dpu_its_spaces_ever_had() -> None:
    # A is shard 1 of 2, B shard 0 (pinned above). Z joins them: 423 reaches both; 283 served
    # X (A) and then Y (B): a moved DPU reaches every shard it ever served.
    assert Shard(1, 2).spaces(SHARED) == ["A"]
    assert shard_dpus(SHARED, Shard(1, 2)) == ["283", "423"]
    assert shard_dpus(SHARED, Shard(0, 2)) == ["283", "423", "77"]
    assert shard_dpus(SHARED, ONE_SHARD) == ["283", "423", "77"]
