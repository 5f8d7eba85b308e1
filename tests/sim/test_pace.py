"""Paces: when each simulated instant is due in wall-clock seconds."""

from __future__ import annotations

import pytest

from headcount.sim.pace import Rate, Speed


def test_speed_compresses_time_by_its_factor() -> None:
    pace = Speed(start=1_000_000, factor=1440)  # a day in a minute
    assert pace.offset(1_000_000) == 0
    assert pace.offset(1_000_000 + 86_400_000) == pytest.approx(60.0)


def test_rate_spreads_events_evenly_whatever_their_simulated_times() -> None:
    # Bunched and sparse simulated times: due one every 1/400 s all the same.
    releases = [0, 1, 2, 3, 10_000, 10_001, 5_000_000, 5_000_001]
    pace = Rate(releases, per_second=400)
    assert [pace.offset(at) for at in sorted(releases)] == [i / 400 for i in range(8)]
    # An instant between events is due when the events before it are.
    assert pace.offset(5_000) == 4 / 400


@pytest.mark.parametrize("bad", [0, -1.0])
def test_a_pace_must_move_forward(bad: float) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        Speed(start=0, factor=bad)
    with pytest.raises(ValueError, match="must be positive"):
        Rate([0], per_second=bad)
