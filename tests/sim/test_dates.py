"""The simulator under a frozen real clock, on the dates that used to matter: a Sunday, the
Monday morning whose day ending now was mostly that Sunday (issue 9), the days Berlin's clocks
change, a year's end, and today.

The runs the simulator's tests make plan the very same events on every one of them, so what
those tests assert holds whatever the date. Without ``--start`` a run ends by the time it does,
so what it simulates depends on the date by design; what it promises (when the day ends, no
event stamped ahead of the real clock) must not.

The clock is frozen with time-machine, which patches ``time.time_ns`` and the other wall-clock
functions in C, so ``headcount simulate``'s own reading of the clock is the frozen one.
Monotonic clocks are left alone: the event loop runs as usual.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from time_machine import TimeMachineFixture

from headcount.clock import now_ms
from headcount.domain.timefmt import parse_iso, to_ms
from headcount.sim.command import prepare
from tests.sim.harness import parse, simulate
from tests.sim.reference import DAY, MINUTE, headquarters
from tests.sim.test_acceptance import RUN as ACCEPTANCE_RUN
from tests.sim.test_command import RATE_RUN, UNACKNOWLEDGED_RUN

CLOCKS = [
    pytest.param("2026-11-29T10:00:00Z", id="sunday"),
    pytest.param("2026-11-30T06:00:00Z", id="monday-morning"),
    # Berlin's clocks go forward at 01:00 UTC (02:00 -> 03:00) and back at 01:00 UTC
    # (03:00 -> 02:00): the day ending at 01:30 UTC holds the change.
    pytest.param("2026-03-29T01:30:00Z", id="berlin-clocks-forward"),
    pytest.param("2026-10-25T01:30:00Z", id="berlin-clocks-back"),
    pytest.param("2026-12-31T23:30:00Z", id="year-end"),
    pytest.param("today", id="today"),
]
#: Any other instant, for comparison: a Tuesday, no clock change near.
REFERENCE = "2026-06-16T10:00:00Z"
SKEW_MS = 2000
#: The runs of the simulator's tests (but for broker, DPU ids and files), by test module.
RUNS = [
    pytest.param(ACCEPTANCE_RUN, id="acceptance"),
    pytest.param((*ACCEPTANCE_RUN, "--missed", "0.05"), id="acceptance-missed"),
    pytest.param(RATE_RUN, id="command-rate"),
    pytest.param(UNACKNOWLEDGED_RUN, id="command-unacknowledged"),
]


def freeze(time_machine: TimeMachineFixture, clock: str) -> int:
    """Stop the real clock at ``clock`` (ISO-8601, or "today": the moment the test runs, to
    the millisecond); its time in ms."""
    if clock == "today":
        at = datetime.now(UTC)
        at = at.replace(microsecond=at.microsecond // 1000 * 1000)
    else:
        at = datetime.fromisoformat(clock)
    time_machine.move_to(at, tick=False)
    assert now_ms() == to_ms(at), "time-machine did not stop the clock the simulator reads"
    return to_ms(at)


@pytest.mark.parametrize("run", RUNS)
@pytest.mark.parametrize("clock", CLOCKS)
async def test_the_simulator_tests_plan_the_same_events_and_truth_on_any_date(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    time_machine: TimeMachineFixture,
    clock: str,
    run: tuple[str, ...],
) -> None:
    async def planned(name: str) -> tuple[dict[str, Any], str, str]:
        """The summary (but for paths and time taken), the events and the truth."""
        # The acceptance runs are of the headquarters; the others generate their topology.
        (tmp_path / "hq.toml").write_text(headquarters())
        topology: list[str | Path] = (
            [] if "--spaces" in run else ["--topology", tmp_path / "hq.toml"]
        )
        result = await simulate(
            capsys, "--dry-run", *topology, *run,
            "--out", tmp_path / f"{name}.jsonl", "--truth", tmp_path / f"{name}.csv",
        )  # fmt: skip
        assert result.code == 0
        summary = {k: v for k, v in result.summary.items() if k not in _VARYING}
        files = (tmp_path / f"{name}.jsonl").read_text(), (tmp_path / f"{name}.csv").read_text()
        return summary, *files

    freeze(time_machine, clock)
    on_the_day = await planned("frozen")
    freeze(time_machine, REFERENCE)
    assert on_the_day == await planned("reference")
    assert on_the_day[0]["events"] > 0


#: What differs between two plans of one run: where the files are, and how long it took.
_VARYING = frozenset({"topology", "truth", "seconds"})


@pytest.mark.parametrize("clock", CLOCKS)
async def test_the_default_start_ends_the_simulated_day_when_the_run_ends(
    capsys: pytest.CaptureFixture[str], time_machine: TimeMachineFixture, clock: str
) -> None:
    now = freeze(time_machine, clock)
    result = await simulate(capsys, "--dry-run", "--speed", "1440")
    start, end = parse_iso(result.summary["start"]), parse_iso(result.summary["end"])
    assert end - start == DAY
    assert start % 1000 == 0  # a whole second
    # A simulated day at 1440x takes a minute: it ends a minute from now, in real time.
    assert now + MINUTE - 1000 < end <= now + MINUTE
    assert "the topology was generated; to count these events" not in result.err  # dry run


@pytest.mark.parametrize(
    "pace",
    [
        pytest.param(["--speed", "1440"], id="speed-1440"),
        pytest.param([], id="real-time"),
        pytest.param(["--speed", "0.5"], id="slow-motion"),
        pytest.param(["--rate", "400"], id="rate"),
    ],
)
@pytest.mark.parametrize("clock", CLOCKS)
def test_with_the_default_start_no_event_is_stamped_ahead_of_the_real_clock(
    time_machine: TimeMachineFixture, clock: str, pace: list[str]
) -> None:
    """When each event is due, the real clock has reached its ts (its DPU's skew included);
    with a speed, the simulated clock never runs ahead of the real one either."""
    now = freeze(time_machine, clock)
    plan = prepare(parse("--dry-run", "--clock-skew", str(SKEW_MS), *pace), now_ms())
    schedule = plan.schedule
    assert schedule.sends, "the run must publish something for this to mean anything"

    def clock_at(at: int) -> float:
        """The real clock (ms) when the simulated instant ``at`` is due."""
        return now + plan.pace.offset(at) * 1000

    assert all(s.traversal.ts <= clock_at(s.release) for s in schedule.sends)
    if "--rate" in pace:
        # Whatever the simulated times, the span ends now (on the clock furthest ahead).
        assert now - 1000 < schedule.end + SKEW_MS <= now
        return
    # The simulated clock moves evenly, so it is never ahead of the real one (on a DPU's clock
    # as far ahead as the skew allows) if it is not at either end of the span; and the start is
    # as late as that allows, to the whole second.
    lead = [clock_at(at) - (at + SKEW_MS) for at in (schedule.start, schedule.end)]
    assert 0 <= min(lead) < 1000
