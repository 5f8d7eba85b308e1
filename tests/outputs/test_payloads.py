from __future__ import annotations

import json

import pytest

from headcount.domain.topology import Space
from headcount.outputs.payloads import (
    Topics,
    discovery_configs,
    ha_id,
    state_payload,
    topic_problem,
)


def test_state_payload_with_and_without_capacity() -> None:
    ts = 1_519_634_762_903
    assert json.loads(state_payload(Space("A", "A", capacity=40), 10, ts)) == {
        "count": 10,
        "ts": "2018-02-26T08:46:02.903Z",
        "capacity": 40,
        "utilization": 0.25,
    }
    without = json.loads(state_payload(Space("A", "A"), 3, ts))
    assert without["capacity"] is None
    assert without["utilization"] is None
    assert json.loads(state_payload(Space("A", "A", capacity=0), 3, ts))["utilization"] is None


@pytest.mark.parametrize(
    ("space_id", "problem"),
    [
        pytest.param("lobby", None, id="plain"),
        pytest.param("étage 1", None, id="unicode-and-space"),
        pytest.param("a/b", "it holds '/', '+', '#' or NUL", id="slash"),
        pytest.param("a+", "it holds '/', '+', '#' or NUL", id="plus"),
        pytest.param("#", "it holds '/', '+', '#' or NUL", id="hash"),
        pytest.param("", "it is empty", id="empty"),
    ],
)
def test_topic_problem(space_id: str, problem: str | None) -> None:
    assert topic_problem(space_id) == problem


def test_home_assistant_ids_are_safe_and_distinct() -> None:
    assert ha_id("lobby-1_a") == "headcount_lobby-1_a"
    odd = [ha_id(text) for text in ("étage 1", "étage_1", "etage 1", "a.b", "a:b")]
    assert len(set(odd)) == len(odd)
    assert all(all(c.isascii() and (c.isalnum() or c in "_-") for c in i) for i in odd)


def test_discovery_configs_name_the_state_topic_and_availability() -> None:
    topics = Topics(root="hc", discovery="ha")
    configs = {
        topic: json.loads(payload)
        for topic, payload in discovery_configs(
            Space("lobby", "Lobby", capacity=40), topics, "1.2.3"
        ).items()
    }
    sensor = configs["ha/sensor/headcount_lobby/config"]
    occupied = configs["ha/binary_sensor/headcount_lobby/config"]
    for config in (sensor, occupied):
        assert config["state_topic"] == "hc/spaces/lobby/state"
        assert config["availability_topic"] == "hc/status"
        assert (config["payload_available"], config["payload_not_available"]) == (
            "online",
            "offline",
        )
        assert config["device"]["identifiers"] == ["headcount_lobby"]
        assert config["device"]["name"] == "Lobby"
        assert config["device"]["sw_version"] == "1.2.3"
    assert sensor["value_template"] == "{{ value_json.count }}"
    assert sensor["unique_id"] == "headcount_lobby_count"
    assert sensor["state_class"] == "measurement"
    assert occupied["device_class"] == "occupancy"
    assert occupied["unique_id"] == "headcount_lobby_occupied"
