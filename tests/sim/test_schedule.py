"""Faults, sequence numbers and DPU moves, decided before anything is published."""

from __future__ import annotations

import itertools
import tomllib
from collections import defaultdict
from typing import Any

import pytest

from headcount.domain.events import Traversal
from headcount.domain.timefmt import parse_iso
from headcount.domain.topology import Assignment, Topology
from headcount.sim.errors import ScheduleError
from headcount.sim.schedule import (
    PER_MS,
    Faults,
    build_schedule,
    changes_toml,
    served_doorways,
)
from tests.conftest import SEED
from tests.sim.reference import (
    DAY,
    MINUTE,
    TUESDAY,
    expected_count,
    headquarters,
    plan_run,
)


def by_dpu(events: list[Traversal]) -> dict[str, list[Traversal]]:
    found: dict[str, list[Traversal]] = defaultdict(list)
    for event in events:
        found[event.dpu_id].append(event)
    return found


def test_sequence_numbers_increase_with_each_detection_and_carry_the_dpu_clock() -> None:
    run = plan_run(headquarters(), people=200, faults=Faults(clock_skew_ms=2000))
    events = sorted(run.schedule.traversals(), key=lambda t: t.seq)
    for dpu_id, mine in by_dpu(events).items():
        assert [t.ts for t in mine] == sorted(t.ts for t in mine), dpu_id
        assert len({t.seq for t in mine}) == len(mine)
        assert all(t.seq // PER_MS == t.ts for t in mine)
    steps = {(s.ts, s.direction) for s in run.steps}
    skews = run.schedule.skews
    assert {(t.ts - skews[t.dpu_id], t.direction) for t in events} == steps


def test_missed_detections_drop_events_and_the_fold_drifts_from_the_truth() -> None:
    run = plan_run(headquarters(), people=150, faults=Faults(missed=0.1))
    sent = run.schedule.traversals()
    assert run.schedule.missed == len(run.steps) - len(sent)
    assert 0.05 < run.schedule.missed / len(run.steps) < 0.15
    noon = TUESDAY + 11 * 60 * MINUTE
    drift = [
        expected_count(run.topology, sent, space_id, noon) - run.truth.count(space_id, noon)
        for space_id in run.topology.spaces
    ]
    assert any(drift)


def test_each_fault_draws_from_its_own_stream() -> None:
    """Turning duplicates and reordering on changes nothing about which passages are missed."""
    alone = plan_run(headquarters(), faults=Faults(missed=0.1))
    mixed = plan_run(headquarters(), faults=Faults(missed=0.1, duplicates=0.5, reorder=0.5))
    assert set(alone.schedule.traversals()) == set(mixed.schedule.traversals())


def test_reordered_events_are_overtaken_by_at_most_the_window() -> None:
    window = 3
    run = plan_run(headquarters(), people=100, faults=Faults(reorder=0.2, reorder_window=window))
    overtaken = 0
    for dpu_id, sent in by_dpu(run.schedule.traversals()).items():
        for i, event in enumerate(sent):
            later_first = sum(1 for before in sent[:i] if before.seq > event.seq)
            assert later_first <= window, dpu_id
            overtaken += later_first > 0
    assert overtaken == run.schedule.reordered > 0
    releases = [send.release for send in run.schedule.sends]
    assert releases == sorted(releases)


def test_duplicates_and_outages_follow_their_rates() -> None:
    faults = Faults(duplicates=0.25, offline=0.5, offline_max_ms=10 * MINUTE)
    run = plan_run((SEED / "topology.toml").read_text(), people=80, faults=faults)
    assert 0.15 < run.schedule.duplicates / len(run.schedule.sends) < 0.35
    outages = sorted(run.schedule.outages, key=lambda o: (o.dpu_id, o.start))
    assert 15 < len(outages) <= 2 * 24  # two DPUs, half of the hours each, some merged
    for one, other in itertools.pairwise(outages):
        if one.dpu_id == other.dpu_id:
            assert one.end < other.start
    for outage in outages:
        assert TUESDAY <= outage.start < outage.end <= TUESDAY + DAY
        assert outage.end - outage.start >= MINUTE or outage.end == TUESDAY + DAY


def test_moved_dpus_trade_doorways_and_the_printed_lines_fix_the_topology() -> None:
    toml = headquarters()
    run = plan_run(toml, faults=Faults(move_dpu=2, clock_skew_ms=1000))
    assert len(run.schedule.moves) == 4  # two swaps, two DPUs each
    # At every moment each doorway has exactly one DPU, read on each DPU's clock (the
    # assignments are in the time the DPUs report).
    skews = run.schedule.skews
    for at in (TUESDAY, *(move.at + step for move in run.schedule.moves for step in (-1, 0))):
        doorways = [run.topology.assignment_at(d, at + skews[d]) for d in run.schedule.dpu_ids]
        assert sorted(a.doorway_id for a in doorways if a) == sorted(run.topology.doorways)
    # The original file, with the replaced entries swapped for the printed ones, is the
    # topology the events assume.
    printed = tomllib.loads(changes_toml(run.schedule))["assignments"]
    replaced = {change.replaced for change in run.schedule.changes}
    original = Topology.from_toml(toml)
    kept = [a for a in original.assignments if a not in replaced]
    added = [
        Assignment(a["dpu"], a["doorway"], parse_iso(a["valid_from"]), _ms(a.get("valid_until")))
        for a in printed
    ]
    fixed = Topology(original.spaces.values(), original.doorways.values(), kept + added)
    assert fixed == run.topology
    assert changes_toml(plan_run(toml).schedule) == ""


def _ms(text: str | None) -> int | None:
    """An optional timestamp."""
    return None if text is None else parse_iso(text)


def test_moving_needs_two_doorways() -> None:
    toml = headquarters().split("[[doorways]]")[0] + (
        '[[doorways]]\nid = "annex"\nname = "annex"\n'
        'links = [{ space = "ANNEX", sensor_placement = 1 }]\n\n'
        '[[assignments]]\ndpu = "a"\ndoorway = "annex"\nvalid_from = "2000-01-01T00:00:00Z"\n'
    )
    with pytest.raises(ScheduleError, match="--move-dpu needs two doorways"):
        plan_run(toml, faults=Faults(move_dpu=1))


def test_only_doorways_served_for_the_whole_run_are_used() -> None:
    topology = Topology.from_toml(
        (SEED / "topology.toml").read_text()
        + """
[[doorways]]
id = "Y"
name = "A door whose DPU came mid-run"
links = [{ space = "A", sensor_placement = 1 }]

[[assignments]]
dpu = "late"
doorway = "Y"
valid_from = "2024-03-05T12:00:00Z"

[[assignments]]
dpu = "000"
doorway = "X"
valid_from = "2018-01-01T00:00:00Z"
"""
    )
    served = served_doorways(topology, TUESDAY, TUESDAY + DAY, margin_ms=1000)
    assert {d: a.dpu_id for d, a in served.items()} == {"X": "000", "Z": "423"}
    schedule = build_schedule(
        topology, [], served, start=TUESDAY, end=TUESDAY + DAY, seed=1, faults=Faults()
    )
    assert schedule.dpu_ids == ("000", "423")


@pytest.mark.parametrize(
    ("faults", "problem"),
    [
        pytest.param({"missed": 1.5}, "missed is a probability", id="rate-above-1"),
        pytest.param({"duplicates": -0.1}, "duplicates is a probability", id="negative-rate"),
        pytest.param({"reorder_window": 0}, "reorder_window >= 1", id="window"),
        pytest.param({"offline_max_ms": 1000}, "offline_max_ms >= 1 minute", id="short-outage"),
        pytest.param({"clock_skew_ms": -1}, "cannot be negative", id="skew"),
    ],
)
def test_impossible_faults_are_refused(faults: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        Faults(**faults)
