from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from headcount.outputs.throttle import Throttle


def test_first_value_passes_then_the_newest_when_the_interval_ends() -> None:
    throttle: Throttle[str, int] = Throttle(1.0)
    assert throttle.offer("A", 1, now=10.0)
    assert not throttle.offer("A", 2, now=10.2)
    assert not throttle.offer("A", 3, now=10.5)
    assert throttle.offer("B", 7, now=10.5)  # keys are independent
    assert throttle.next_due() == 11.0
    assert throttle.due(10.9) == []
    assert throttle.due(11.0) == [("A", 3)]
    assert throttle.next_due() is None
    assert not throttle.offer("A", 4, now=11.5)  # 11.0 counted as a send
    assert throttle.due(12.0) == [("A", 4)]
    assert throttle.offer("A", 5, now=13.5)


def test_a_late_offer_after_the_interval_passes_at_once_and_drops_the_stale_deadline() -> None:
    throttle: Throttle[str, int] = Throttle(1.0)
    assert throttle.offer("A", 1, now=0.0)
    assert not throttle.offer("A", 2, now=0.5)
    assert throttle.offer("A", 3, now=1.5)  # due() was not called in time: 3 supersedes 2
    assert not throttle.offer("A", 4, now=2.0)
    assert throttle.due(1.9) == []
    assert throttle.due(2.5) == [("A", 4)]


def test_flush_gives_every_waiting_value() -> None:
    throttle: Throttle[str, int] = Throttle(5.0)
    throttle.offer("A", 1, now=0.0)
    throttle.offer("A", 2, now=1.0)
    throttle.offer("B", 1, now=0.0)
    throttle.offer("B", 9, now=1.0)
    assert sorted(throttle.flush()) == [("A", 2), ("B", 9)]
    assert throttle.next_due() is None


def test_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="above 0"):
        Throttle(0.0)


offers = st.lists(
    st.tuples(st.sampled_from("ABC"), st.floats(min_value=0.0, max_value=3.0)), max_size=60
)


@given(offers, st.floats(min_value=0.1, max_value=2.0))
def test_at_most_once_per_interval_and_the_last_value_always_passes(
    steps: list[tuple[str, float]], interval: float
) -> None:
    throttle: Throttle[str, int] = Throttle(interval)
    now = 0.0
    sent: dict[str, list[tuple[float, int]]] = {}
    last: dict[str, int] = {}
    for value, (key, gap) in enumerate(steps):
        for due_key, due_value in throttle.due(now):
            sent.setdefault(due_key, []).append((now, due_value))
        now += gap
        last[key] = value
        if throttle.offer(key, value, now):
            sent.setdefault(key, []).append((now, value))
    while (when := throttle.next_due()) is not None:
        now = max(now, when)
        for due_key, due_value in throttle.due(now):
            sent.setdefault(due_key, []).append((now, due_value))
    for key, value in last.items():
        times = [t for t, _ in sent[key]]
        values = [v for _, v in sent[key]]
        assert values[-1] == value  # the last value always goes out
        assert values == sorted(values)  # in order, never an older one after a newer
        assert all(b - a >= interval - 1e-9 for a, b in itertools.pairwise(times))
