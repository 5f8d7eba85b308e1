from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from headcount.domain.topology import Space, Topology
from headcount.outputs.alerts import Alert, AlertDetector, AlertRule, AlertState


def topology(*spaces: Space) -> Topology:
    return Topology(spaces, [], [])


@pytest.mark.parametrize(
    ("space", "rule"),
    [
        pytest.param(Space("A", "A", capacity=100), AlertRule(100, 100, 95), id="capacity-100"),
        pytest.param(Space("A", "A", capacity=10), AlertRule(10, 10, 9), id="margin-at-least-1"),
        pytest.param(Space("A", "A", capacity=1), AlertRule(1, 1, 0), id="capacity-1"),
        pytest.param(
            Space("A", "A", capacity=40, alert_at=0.9), AlertRule(40, 36, 34), id="alert-at-0.9"
        ),
        pytest.param(
            Space("A", "A", capacity=50, alert_at=1.2), AlertRule(50, 60, 58), id="alert-at-1.2"
        ),
        pytest.param(
            Space("A", "A", capacity=3, alert_at=0.01), AlertRule(3, 1, 0), id="at-least-one"
        ),
    ],
)
def test_rule(space: Space, rule: AlertRule) -> None:
    assert AlertRule.for_space(space) == rule


@pytest.mark.parametrize("capacity", [None, 0])
def test_no_rule_without_a_capacity(capacity: int | None) -> None:
    assert AlertRule.for_space(Space("A", "A", capacity=capacity)) is None
    detector = AlertDetector(topology(Space("A", "A", capacity=capacity)))
    assert detector.observe("A", 1, 10_000) is None


def test_over_then_clear_with_hysteresis() -> None:
    detector = AlertDetector(topology(Space("A", "A", capacity=100)))
    detector.start("A", 50)
    seen = []
    for ts, count in enumerate([98, 99, 100, 99, 100, 101, 96, 95, 96, 99, 100, 94], start=1):
        alert = detector.observe("A", ts, count)
        if alert is not None:
            seen.append((alert.ts, alert.state, alert.count))
    assert seen == [(3, "over", 100), (8, "clear", 95), (11, "over", 100), (12, "clear", 94)]


def test_start_takes_the_state_without_an_alert() -> None:
    detector = AlertDetector(topology(Space("A", "A", capacity=10)))
    detector.start("A", 12)
    assert detector.observe("A", 1, 11) is None  # still over: no new "over"
    alert = detector.observe("A", 2, 9)
    assert alert == Alert("A", 2, AlertState.CLEAR, 9, 10, 10)


def test_alert_payload() -> None:
    alert = Alert("lobby", 1_519_634_762_903, AlertState.OVER, 36, 40, 36)
    assert json.loads(alert.payload()) == {
        "space_id": "lobby",
        "ts": "2018-02-26T08:46:02.903Z",
        "state": "over",
        "count": 36,
        "capacity": 40,
        "threshold": 36,
    }


@given(
    st.integers(min_value=1, max_value=300),
    st.one_of(st.none(), st.floats(min_value=0.01, max_value=2.0)),
    st.lists(st.integers(min_value=0, max_value=400), max_size=80),
)
def test_alerts_alternate_and_match_the_rule(
    capacity: int, alert_at: float | None, counts: list[int]
) -> None:
    space = Space("A", "A", capacity=capacity, alert_at=alert_at)
    rule = AlertRule.for_space(space)
    assert rule is not None
    assert rule.clear_at < rule.threshold
    detector = AlertDetector(topology(space))
    state = AlertState.CLEAR
    for ts, count in enumerate(counts):
        alert = detector.observe("A", ts, count)
        if state is AlertState.CLEAR and count >= rule.threshold:
            assert alert is not None
            assert alert.state is AlertState.OVER
            state = AlertState.OVER
        elif state is AlertState.OVER and count <= rule.clear_at:
            assert alert is not None
            assert alert.state is AlertState.CLEAR
            state = AlertState.CLEAR
        else:
            assert alert is None
