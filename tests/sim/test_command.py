"""``headcount simulate`` as a person uses it: flags, files, summary and errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from time_machine import TimeMachineFixture

from headcount.domain.timefmt import format_ms, from_ms
from headcount.domain.topology import Topology
from headcount.errors import TopologyError
from headcount.ingest.broker import free_port
from headcount.sim.command import run
from headcount.sim.errors import SimulatorError
from headcount.sim.truth import Truth
from tests.conftest import SEED
from tests.mqtt_fixtures import MqttNames
from tests.sim.harness import dpu_url, forget_status, parse, simulate
from tests.sim.reference import DAY, HOUR, TUESDAY, headquarters

SUMMARY_KEYS = {
    "seed", "start", "end", "speed", "dry run", "topology", "spaces", "dpus", "doorways used",
    "people", "passages", "events", "sent", "acknowledged", "buffered", "publishes", "batches",
    "duplicates", "retransmitted", "reconnections", "faults", "truth", "seconds",
}  # fmt: skip
#: Every run here starts at this Tuesday, so its volumes do not depend on today's weekday (a
#: day ending now, on a Monday morning, was mostly a Sunday: few people come at weekends);
#: test_dates plans the runs below under frozen clocks.
START = format_ms(TUESDAY)
#: The real clock, frozen, for what checks the start against it: a day after START.
NOW = TUESDAY + DAY
#: `test_a_run_at_a_rate_delivers_every_event`'s run: 174 events on START's day (a day ending
#: on a Sunday gave 40 to 50 of the more than 50 asserted).
RATE_RUN = ("--rate", "400", "--spaces", "3", "--people", "20", "--seed", "2", "--start", START)
#: `test_events_a_broker_never_took_are_counted_and_reported`'s run: a day in 0.1 s.
UNACKNOWLEDGED_RUN = (
    "--seed", "3", "--spaces", "2", "--start", START, "--duration", "1d", "--speed", "864000",
)  # fmt: skip


async def test_a_dry_run_writes_the_topology_truth_and_events_the_same_for_the_same_seed(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    def files(name: str) -> list[str | Path]:
        return [
            "--write-topology", tmp_path / f"{name}.toml",
            "--truth", tmp_path / f"{name}.csv",
            "--out", tmp_path / f"{name}.jsonl",
        ]  # fmt: skip

    common = [
        "--dry-run",
        "--spaces",
        "12",
        "--dpus",
        "15",
        "--start",
        START,
        "--duplicates",
        "0.1",
    ]
    first = await simulate(capsys, *common, "--seed", "5", *files("first"))
    again = await simulate(capsys, *common, "--seed", "5", *files("again"))
    other = await simulate(capsys, *common, "--seed", "6", *files("other"))
    assert first.code == 0
    assert set(first.summary) == SUMMARY_KEYS
    assert first.summary["dry run"] is True
    assert first.summary["sent"] == first.summary["acknowledged"] == 0
    assert first.summary["spaces"] == 12
    assert first.summary["dpus"] == 15
    assert first.summary["people"] == 10 * 12  # ten per reachable space
    assert first.summary["start"] == "2024-03-05T00:00:00.000Z"

    def same(summary: dict[str, object]) -> dict[str, object]:
        return {k: v for k, v in summary.items() if k not in ("seconds", "truth")}

    assert same(again.summary) == same(first.summary)
    for suffix in ("toml", "csv", "jsonl"):
        assert (tmp_path / f"first.{suffix}").read_text() == (
            tmp_path / f"again.{suffix}"
        ).read_text()
    assert (tmp_path / "first.csv").read_text() != (tmp_path / "other.csv").read_text()
    assert other.summary["seed"] == 6

    topology = Topology.from_toml((tmp_path / "first.toml").read_text())
    assert len(topology.spaces) == 12
    truth = Truth.load(tmp_path / "first.csv")
    assert set(truth.spaces) == set(topology.spaces)
    lines = [json.loads(line) for line in (tmp_path / "first.jsonl").read_text().splitlines()]
    assert set(lines[0]) == {"dpu_id", "seq", "ts", "direction"}
    events = first.summary["events"]
    assert len(lines) == events + first.summary["faults"]["duplicates"]
    assert len({(e["dpu_id"], e["seq"]) for e in lines}) == events
    assert "the topology was generated" not in first.err  # it was written


async def test_moves_are_printed_and_written_into_the_topology(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "hq.toml").write_text(headquarters())
    result = await simulate(
        capsys,
        "--dry-run", "--topology", tmp_path / "hq.toml", "--start", START, "--seed", "1",
        "--move-dpu", "1", "--write-topology", tmp_path / "moved.toml",
    )  # fmt: skip
    assert result.summary["faults"]["dpu moves"] == 2
    assert f"the topology needs these changes (already in {tmp_path / 'moved.toml'})" in result.err
    assert result.err.splitlines().count("[[assignments]]") == 4  # two DPUs, before and after
    moved = Topology.from_toml((tmp_path / "moved.toml").read_text())
    assert len(moved.assignments) == len(Topology.from_toml(headquarters()).assignments) + 2


async def test_doorways_nobody_can_use_are_named(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "t.toml").write_text(
        (SEED / "topology.toml").read_text() + '\n[[doorways]]\nid = "W"\nname = "W"\nlinks = []\n'
    )
    result = await simulate(
        capsys, "--dry-run", "--topology", tmp_path / "t.toml", "--start", START
    )
    assert "doorway 'W' is not used: no DPU serves it for the whole run" in result.err
    assert result.summary["doorways used"] == 2


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        pytest.param(["--missed", "2"], "2.0 is not between 0 and 1", id="rate"),
        pytest.param(["--duration", "1w"], "'1w' is not a span", id="span"),
        pytest.param(["--offline-max", "30s"], "an outage lasts at least 1m", id="outage"),
        pytest.param(["--batch", "20000"], "at most 10000 per payload", id="batch"),
        pytest.param(["--speed", "0"], "0.0 must be more than 0", id="speed"),
        pytest.param(["--speed", "2", "--rate", "5"], "not allowed with argument", id="both"),
    ],
)
def test_bad_flags_say_what_is_expected(
    capsys: pytest.CaptureFixture[str], argv: list[str], problem: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse(*argv)
    assert exit_info.value.code == 2
    assert problem in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        pytest.param(
            ["--topology", SEED / "topology.toml", "--spaces", "3"],
            "--spaces and --dpus generate a topology: leave them out",
            id="topology-and-spaces",
        ),
        pytest.param(
            ["--topology", "/nonexistent/t.toml"],
            "cannot read topology file /nonexistent/t.toml",
            id="no-file",
        ),
        pytest.param(["--start", "2024-03-05T00:00:00"], "--start: .* has no UTC offset", id="tz"),
        pytest.param(
            ["--start", format_ms(NOW + HOUR), "--duration", "1h"],
            r"stamped up to 3600 s ahead of the real clock .* future_ts",
            id="future",
        ),
    ],
)
async def test_unusable_input_is_refused_with_what_to_do(
    argv: list[str], problem: str, time_machine: TimeMachineFixture
) -> None:
    # The real clock frozen at NOW: "future" is an hour after it whenever the test runs.
    time_machine.move_to(from_ms(NOW), tick=False)
    args = parse(*argv, "--broker", f"mqtt://127.0.0.1:{free_port()}")
    with pytest.raises(SimulatorError, match=problem):
        await run(args)


async def test_events_a_broker_never_took_are_counted_and_reported(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """No broker at all: the DPUs keep everything buffered; the summary still comes out."""
    args = parse(
        "--broker", f"mqtt://127.0.0.1:{free_port()}", *UNACKNOWLEDGED_RUN, "--drain-timeout", "0.3"
    )
    with pytest.raises(SimulatorError, match="events were never acknowledged: the broker"):
        await run(args)
    summary = json.loads(capsys.readouterr().out)
    assert summary["buffered"] == summary["events"] > 0
    assert summary["acknowledged"] == 0


async def test_a_run_at_a_rate_delivers_every_event(
    capsys: pytest.CaptureFixture[str], broker_url: str, mqtt_names: MqttNames
) -> None:
    """The pacing itself is in test_pace (no wall clock asserted here)."""
    prefix = f"{mqtt_names.token}-"
    try:
        result = await simulate(
            capsys,
            "--broker", dpu_url(broker_url), *RATE_RUN, "--dpu-prefix", prefix,
        )  # fmt: skip
    finally:
        await forget_status(broker_url, [f"{prefix}dpu{n}" for n in range(3)])
    events = result.summary["events"]
    assert result.summary["rate"] == 400
    assert result.summary["acknowledged"] == events > 50


async def test_a_topology_file_that_is_not_utf8_is_a_topology_error(tmp_path: Path) -> None:
    path = tmp_path / "topology.toml"
    path.write_bytes(b'[[spaces]]\nid = "\xff"\n')
    args = parse("--topology", str(path), "--broker", f"mqtt://127.0.0.1:{free_port()}")
    with pytest.raises(TopologyError, match=r"is not UTF-8 text \(byte 0xff at offset 17\)"):
        await run(args)
