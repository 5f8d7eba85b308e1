"""The people model: people walk only through doorways that join their places, counts follow
a day, and with no faults the truth is exactly the fold of the events the DPUs send."""

from __future__ import annotations

import bisect
from datetime import datetime
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from headcount.domain.timefmt import to_ms
from headcount.sim.floorplan import OUTSIDE, FloorPlan
from headcount.sim.people import Population, walk
from headcount.sim.schedule import Faults
from headcount.sim.synthetic import synthetic_topology
from tests.conftest import SEED
from tests.sim.reference import (
    DAY,
    HOUR,
    TUESDAY,
    Run,
    expected_count,
    fold_steps,
    headquarters,
    plan_run,
)

BERLIN = ZoneInfo("Europe/Berlin")


def assert_truth_is_the_fold(run: Run, *, quiet_ms: int = 0) -> int:
    """Truth == fold of the sent events at every instant either changes, for every space.
    With ``quiet_ms``, instead, at the first instant ``quiet_ms`` after each passage that has
    no passage of the space that near. Returns how many comparisons were made."""
    events = run.schedule.traversals()
    compared = 0
    for space_id in run.topology.spaces:
        folded = fold_steps(run.topology, events, space_id)
        truth_times = [ts for ts, _ in run.truth.changes(space_id)]
        if quiet_ms:
            instants = {ts + quiet_ms + 1 for ts in truth_times}
        else:
            instants = {ts for ts, _ in folded} | set(truth_times)
        for ts in sorted(instants):
            near = bisect.bisect_left(truth_times, ts - quiet_ms)
            if quiet_ms and near < len(truth_times) and truth_times[near] <= ts + quiet_ms:
                continue
            at = bisect.bisect_right(folded, (ts, float("inf"))) - 1
            fold = folded[at][1] if at >= 0 else 0
            assert fold == run.truth.count(space_id, ts), (space_id, ts)
            compared += 1
        end = run.schedule.end
        assert expected_count(run.topology, events, space_id, end) == run.truth.count(
            space_id, end
        ), space_id
    return compared


def test_people_walk_only_through_doorways_that_join_where_they_are() -> None:
    run = plan_run(headquarters(), people=80)
    assert run.steps, "nobody came in"
    where: dict[int, object] = {}
    for step in run.steps:
        opening = run.floor.openings[step.doorway_id]
        assert where.get(step.person, OUTSIDE) == step.origin  # everybody starts outside
        assert {step.origin, step.destination} == {opening.dpu_side, opening.far_side}
        assert step.direction == (1 if step.destination == opening.dpu_side else -1)
        assert run.schedule.start <= step.ts < run.schedule.end
        where[step.person] = step.destination
    assert [s.ts for s in run.steps] == sorted(s.ts for s in run.steps)


def test_every_doorway_is_used_and_nested_spaces_count_everyone_inside() -> None:
    run = plan_run(headquarters(), people=150)
    assert {step.doorway_id for step in run.steps} == set(run.floor.openings)
    noon = to_ms(datetime(2024, 3, 5, 12, 0, tzinfo=BERLIN))
    count = {space_id: run.truth.count(space_id, noon) for space_id in run.topology.spaces}
    assert count["HQ"] == count["G"] + count["F1"]
    assert count["G"] >= count["L"] + count["C"]
    assert count["F1"] >= count["O1"] + count["M"]


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    spaces=st.integers(1, 20),
    extra_dpus=st.integers(0, 10),
    people=st.integers(0, 60),
    seed=st.integers(0, 2**32),
    days=st.integers(1, 3),
)
def test_with_no_faults_the_truth_is_the_fold_and_never_negative(
    spaces: int, extra_dpus: int, people: int, seed: int, days: int
) -> None:
    toml = synthetic_topology(spaces, spaces + extra_dpus).to_toml()
    run = plan_run(toml, people=people, seed=seed, duration=days * DAY)
    for space_id in run.truth.spaces:
        assert all(count >= 0 for _, count in run.truth.changes(space_id))
    assert_truth_is_the_fold(run)


def test_seed_topology_truth_is_the_fold_with_duplicates_reordering_and_outages() -> None:
    faults = Faults(duplicates=0.2, reorder=0.2, offline=0.3)
    run = plan_run((SEED / "topology.toml").read_text(), people=40, faults=faults)
    assert run.schedule.duplicates
    assert run.schedule.reordered
    assert run.schedule.outages
    assert assert_truth_is_the_fold(run) > 100


def test_with_clock_skew_the_truth_is_the_fold_wherever_skew_cannot_matter() -> None:
    """A skewed DPU stamps a passage early or late, so right around a passage the service
    answers differently from the truth; anywhere else, and at the end, it does not: one
    person's passages are further apart than twice the skew, so their order survives and the
    floor at zero never bites."""
    skew = 3000
    run = plan_run(headquarters(), people=120, faults=Faults(clock_skew_ms=skew, move_dpu=2))
    assert max(abs(s) for s in run.schedule.skews.values()) > skew // 2
    assert assert_truth_is_the_fold(run, quiet_ms=skew) > 1000


def test_same_seed_same_day_other_seed_other_day() -> None:
    first = plan_run(headquarters(), seed=7, faults=Faults(duplicates=0.1, move_dpu=1))
    again = plan_run(headquarters(), seed=7, faults=Faults(duplicates=0.1, move_dpu=1))
    other = plan_run(headquarters(), seed=8, faults=Faults(duplicates=0.1, move_dpu=1))
    assert first.steps == again.steps
    assert first.schedule == again.schedule
    assert all(first.truth.changes(s) == again.truth.changes(s) for s in first.truth.spaces)
    assert first.steps != other.steps


def test_more_people_leave_the_first_ones_days_unchanged() -> None:
    """Each person draws from their own stream: a bigger run contains the smaller one."""
    topology = synthetic_topology(8, 8)
    floor = FloorPlan(topology)
    few = walk(floor, topology, Population(10, TUESDAY, TUESDAY + DAY, seed=3))
    many = walk(floor, topology, Population(40, TUESDAY, TUESDAY + DAY, seed=3))
    assert few == [step for step in many if step.person < 10]


def test_the_day_has_a_morning_a_lunch_and_an_evening() -> None:
    run = plan_run(headquarters(), people=300, duration=7 * DAY)

    def at(day: int, hour: float) -> int:
        """HQ's count at ``hour`` Berlin time on March ``day``, 2024."""
        moment = datetime(2024, 3, day, int(hour), int(hour % 1 * 60), tzinfo=BERLIN)
        return run.truth.count("HQ", to_ms(moment))

    for day in (6, 7, 8, 11):  # Wednesday to Friday and the next Monday
        assert at(day, 3) == 0
        assert at(day, 7) < at(day, 10.5) > at(day, 20.5)
        assert at(day, 10.5) > at(day, 12.5) < at(day, 15)  # out for lunch and back
    assert at(9, 11) < at(8, 11) / 2  # Saturday
    assert at(5, 10.5) > 0  # the first morning counts: the run starts at midnight UTC


def test_a_day_that_began_before_the_start_is_left_out() -> None:
    """Nobody is inside at the start: a run starting at 11:30 Berlin time, after the last
    arrival, has only the HQ people of later days, and the truth starts at zero everywhere."""
    start = to_ms(datetime(2024, 3, 5, 11, 30, tzinfo=BERLIN))
    run = plan_run(headquarters(), people=100, start=start, duration=2 * DAY)
    in_hq = [s.ts for s in run.steps if "HQ" in run.floor.containing(s.destination)]
    assert min(in_hq) > start + 18 * HOUR  # the next morning
    assert all(run.truth.changes(space_id)[0] == (start, 0) for space_id in run.truth.spaces)
