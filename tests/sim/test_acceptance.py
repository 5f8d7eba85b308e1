"""Done when: a reproducible simulated day, with faults, against a real ``headcount serve``, and
afterwards the service's counts are the simulator's truth.

The simulation is planned twice with the same seed and start: once with ``--dry-run``, which
writes the topology the events assume (the DPU moves included) for the service to start with,
and once for real, which must write the very same topology and truth. The day runs 8640 times
faster than real time (about ten seconds).

The day is a fixed one, whatever today is: from Tuesday 2024-03-05 14:00 UTC to Wednesday
14:00 (15:00 in Berlin), so the volumes asserted hold on any date (a day ending now was, on a
Monday morning, mostly a Sunday, when few people come in). It ends while people are in, so the
counts at its end are not all zero and waiting for them waits for ingest. Its events are all in
the service's past, which the service takes like any late event (it refuses only events ahead
of its clock, as ``future_ts``); but the daily resets since (03:00 in Berlin) have emptied,
live, every space that has one.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from headcount.clock import now_ms
from headcount.domain.events import Traversal
from headcount.domain.fold import daily_reset_instant
from headcount.domain.timefmt import format_ms, from_ms, parse_iso
from headcount.domain.topology import Topology
from headcount.sim.truth import Truth
from tests.mqtt_fixtures import MqttNames
from tests.sim.harness import Service, Simulated, dpu_url, forget_status, simulate
from tests.sim.reference import DAY, MINUTE, expected_count, expected_counts, headquarters

SEED = 20240305
#: A Tuesday afternoon to a Wednesday afternoon: about 800 events (more than 500 are asserted),
#: and people in at the end.
START = "2024-03-05T14:00:00Z"
SPEED = 8640
SKEW_MS = 2000
FAULTS = [
    "--duplicates", "0.05",
    "--reorder", "0.05",
    "--reorder-window", "3",
    "--offline", "0.2",
    "--clock-skew", str(SKEW_MS),
    "--move-dpu", "1",
]  # fmt: skip
#: The simulated run but for its topology file, broker and output files (test_dates plans it
#: under frozen clocks).
RUN = (
    "--seed", str(SEED),
    "--start", START,
    "--duration", "1d",
    "--people", "150",
    "--speed", str(SPEED),
    *FAULTS,
)  # fmt: skip


def samples(start: int) -> list[int]:
    """Every half hour of the day, and its last millisecond."""
    return [start + n * 30 * MINUTE for n in range(1, 48)] + [start + DAY - 1]


@contextlib.asynccontextmanager
async def planned_and_run(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    broker_url: str,
    names: MqttNames,
    *extra: str,
    service_class: type[Service] = Service,
) -> AsyncIterator[tuple[Simulated, Service, Topology, Truth]]:
    """Plan with --dry-run, start the service (a ``service_class``) on the planned topology,
    run the simulation for real; the service runs until the block ends."""
    (tmp_path / "hq.toml").write_text(headquarters(prefix=f"{names.token}-"))
    args: list[str | Path] = [
        "--topology", tmp_path / "hq.toml",
        *RUN,
        "--broker", dpu_url(broker_url),
        "--truth", tmp_path / "truth.csv",
        "--write-topology", tmp_path / "simulated.toml",
        "--out", tmp_path / "events.jsonl",
        *extra,
    ]  # fmt: skip
    planned = await simulate(capsys, *args, "--dry-run")
    written = {name: (tmp_path / name).read_text() for name in ("simulated.toml", "truth.csv")}
    topology = tmp_path / "simulated.toml"
    async with contextlib.AsyncExitStack() as stack:
        dpu_ids = Topology.from_toml(written["simulated.toml"]).dpu_ids()
        stack.push_async_callback(forget_status, broker_url, dpu_ids)
        service = service_class(tmp_path, topology, broker_url, names.client_id("service"))
        await stack.enter_async_context(service)
        ran = await simulate(capsys, *args)
        assert ran.code == 0, ran.err
        # Reproducible: the real run planned exactly what the dry run did.
        for name, text in written.items():
            assert (tmp_path / name).read_text() == text, name
        assert ran.summary["events"] == planned.summary["events"]
        assert ran.summary["acknowledged"] == ran.summary["events"] > 500
        assert ran.summary["buffered"] == 0
        faults = ran.summary["faults"]
        assert faults["duplicates"] > 0
        assert faults["reordered"] > 0
        assert faults["outages"] > 0
        assert faults["dpu moves"] == 2
        assert ran.summary["duplicates"] == faults["duplicates"]
        assert ran.summary["batches"] > 0  # backlogs went up as arrays
        truth = Truth.load(tmp_path / "truth.csv")
        yield ran, service, Topology.from_toml(written["simulated.toml"]), truth


async def test_a_simulated_day_with_faults_ends_with_the_true_counts(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, broker_url: str, mqtt_names: MqttNames
) -> None:
    """All faults but missed detections. Clock skew stays on, so counts are compared only at
    moments skew cannot change: none of the space's passages within the largest skew of the
    moment (a skewed DPU stamps a passage up to that much early or late; the simulator keeps
    one person's passages further apart than twice the skew, so the floor at zero never makes
    the service differ elsewhere). After the day, the counts must be the final truth: at its
    end, and live but for the daily resets since."""
    run = planned_and_run(capsys, tmp_path, broker_url, mqtt_names)
    async with run as (ran, service, topology, truth):
        assert ran.summary["faults"]["missed"] == 0
        final = {space_id: truth.final(space_id) for space_id in truth.spaces}
        await service.settle(final, at=after_the_day(ran))
        await service.settle(
            {s: 0 if topology.space(s).daily_reset else final[s] for s in truth.spaces}
        )
        compared, occupied, skipped = 0, 0, 0
        for space_id in truth.spaces:
            passages = [ts for ts, _ in truth.changes(space_id)[1:]]
            for at in samples(truth.start):
                if any(abs(ts - at) <= SKEW_MS for ts in passages):
                    skipped += 1
                    continue
                answer = await service.count(space_id, format_ms(at))
                assert answer == truth.count(space_id, at), (space_id, format_ms(at))
                compared += 1
                occupied += answer > 0
        assert compared > 10 * skipped
        assert occupied > 25
        # Every DPU's final status carried its delivery report, and nothing was lost on the way.
        events = map(json.loads, (tmp_path / "events.jsonl").read_text().splitlines())
        seqs: dict[str, set[int]] = {d: set() for d in topology.dpu_ids()}
        for e in events:
            seqs[e["dpu_id"]].add(e["seq"])
        await service.settle_deliveries(
            {d: {"sent": len(s), "stored": len(s), "missing": 0} for d, s in seqs.items()}
        )


async def test_missed_detections_drift_from_the_truth_exactly_as_the_fold_says(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, broker_url: str, mqtt_names: MqttNames
) -> None:
    """Missed detections are real drift: the service must answer the fold of the events the
    DPUs did send (floor at zero, daily resets at 03:00 Berlin time included), which differs
    from the truth, and a daily reset, when nobody is in, brings it back to the truth."""
    run = planned_and_run(capsys, tmp_path, broker_url, mqtt_names, "--missed", "0.05")
    async with run as (ran, service, topology, truth):
        assert ran.summary["faults"]["missed"] > 0
        sent = [
            Traversal(e["dpu_id"], e["seq"], e["ts"], e["direction"])
            for e in map(json.loads, (tmp_path / "events.jsonl").read_text().splitlines())
        ]
        assert len(set(sent)) == ran.summary["events"]
        end = after_the_day(ran)
        await service.settle(
            {s: expected_count(topology, sent, s, end) for s in truth.spaces}, at=end
        )
        now = now_ms()
        await service.settle({s: expected_count(topology, sent, s, now) for s in truth.spaces})
        drift = 0
        for space_id in truth.spaces:
            times = samples(truth.start)
            for at, expected in zip(
                times, expected_counts(topology, sent, space_id, times), strict=True
            ):
                answer = await service.count(space_id, format_ms(at))
                assert answer == expected, (space_id, format_ms(at))
                drift += abs(expected - truth.count(space_id, at))
        assert drift > 0, "no missed detection changed any answer"
        reset = _berlin_reset_within(truth.start)
        for space_id in ("HQ", "G", "L", "C", "F1", "O1", "M"):
            assert truth.count(space_id, reset) == 0  # nobody is in at 03:00
            assert await service.count(space_id, format_ms(reset)) == 0


def after_the_day(ran: Simulated) -> int:
    """The first moment after every event of the day, skewed stamps included: a count then
    takes every event, and (people being in) waits for ingest to have stored them."""
    return parse_iso(ran.summary["end"]) + SKEW_MS


def _berlin_reset_within(start: int) -> int:
    """The 03:00 Europe/Berlin daily reset inside the day that begins at ``start``."""
    hq = Topology.from_toml(headquarters()).space("HQ")
    assert hq.daily_reset is not None
    day = from_ms(start).date()
    for date in (day, day + timedelta(days=1)):
        instant = daily_reset_instant(hq.time_zone, date, hq.daily_reset)
        if start < instant < start + DAY:
            return instant
    raise AssertionError("a day holds a 03:00 reset")
