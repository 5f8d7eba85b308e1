"""``headcount simulate``: simulated people, simulated DPU firmware, and the ground truth.

:func:`add_command` adds the subcommand to ``headcount``'s parser; :func:`run` is its handler.
Planning (people, faults, files) is pure and runs first; then the firmware publishes, unless
``--dry-run``. Progress goes to stderr, the summary as JSON to stdout.

About 520 lines, over this project's usual 400, because a third of it is the flag table of
:func:`add_command` (twenty-five flags, each with its help text): splitting the table from the
code that reads the flags would put each flag's meaning in two places.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from headcount.argtypes import at_least_one, non_negative
from headcount.clock import now_ms
from headcount.domain.timefmt import format_ms, parse_iso
from headcount.domain.topology import Topology, document_text
from headcount.errors import InvalidTimestampError
from headcount.ingest import wire
from headcount.ingest.mqtt import parse_broker_url
from headcount.progress import Progress
from headcount.sim import people
from headcount.sim.accounts import CREDENTIALS_FILE, read_credentials
from headcount.sim.errors import SimulatorError
from headcount.sim.floorplan import FloorPlan
from headcount.sim.pace import Pace, Rate, Speed
from headcount.sim.schedule import (
    Faults,
    Schedule,
    build_schedule,
    changes_toml,
    served_doorways,
)
from headcount.sim.synthetic import synthetic_topology
from headcount.sim.truth import Truth

if TYPE_CHECKING:
    from headcount.sim.firmware import Stats

DEFAULT_BROKER: Final = "mqtt://127.0.0.1:1883"
DEFAULT_SPACES: Final = 8
DEFAULT_BATCH: Final = 100
#: One connection per DPU up to this many DPUs; beyond, DPUs share them (see firmware).
DEFAULT_CONNECTIONS: Final = 32
PEOPLE_PER_SPACE: Final = 10
#: Least time between two doorways one person walks through, without clock skew (ms).
MIN_GAP_MS: Final = 5_000
_SPAN = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)?")
_UNITS: Final = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def add_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``simulate`` to ``headcount``'s subcommands, with :func:`run` as its handler."""
    cmd = commands.add_parser(
        "simulate",
        help="simulate people and DPU firmware publishing over MQTT, with the ground truth",
        description="Simulate people walking through the doorways of a topology and the DPUs"
        " over them: each DPU publishes its traversals over MQTT like real firmware (QoS 1,"
        " store and forward, backlog uploaded as arrays, status and last will), with faults"
        " injected at the rates given. --truth writes how many people really were in each"
        " space. The same --seed and --start give the same events and truth.",
    )
    where = cmd.add_argument_group("where")
    where.add_argument(
        "--broker",
        default=os.environ.get("HEADCOUNT_BROKER", DEFAULT_BROKER),
        metavar="URL",
        help="MQTT broker, mqtt://[user:pass@]host[:port], or mqtts://... for TLS (port 8883"
        " by default; ?ca=FILE trusts a private CA) (env HEADCOUNT_BROKER; default %(default)s)",
    )
    where.add_argument(
        "--credentials",
        type=Path,
        metavar="FILE_OR_DIR",
        help="DPU passwords, 'dpu_id<TAB>password' lines as 'headcount dpus credentials'"
        f" prints them (a directory: its {CREDENTIALS_FILE}): each DPU then logs in as itself"
        " on a connection of its own, instead of sharing --connections",
    )
    where.add_argument(
        "--topology",
        type=Path,
        metavar="FILE",
        help="topology TOML to simulate (default: generate one with --spaces and --dpus)",
    )
    where.add_argument(
        "--spaces",
        type=at_least_one,
        metavar="N",
        help=f"generate a topology of N spaces, in buildings of rooms (default {DEFAULT_SPACES})",
    )
    where.add_argument(
        "--dpus",
        type=at_least_one,
        metavar="N",
        help="generate N doorways with a DPU each (default: one per space)",
    )
    where.add_argument(
        "--dpu-prefix",
        default="sim-",
        metavar="TEXT",
        help="id prefix of generated DPUs, dpu ids being TEXTdpuN (default %(default)s)",
    )
    where.add_argument(
        "--write-topology",
        type=Path,
        metavar="FILE",
        help="write the topology the events assume (the generated one, or --topology with the"
        " --move-dpu changes) for headcount serve --topology",
    )
    where.add_argument(
        "--truth",
        type=Path,
        metavar="FILE",
        help="write the ground truth, CSV ts,space_id,count at every change",
    )
    where.add_argument(
        "--out",
        type=Path,
        metavar="FILE",
        help="write the events to publish as JSON lines {dpu_id, seq, ts, direction}",
    )
    where.add_argument(
        "--dry-run",
        action="store_true",
        help="plan and write the files, publish nothing (no broker needed)",
    )

    when = cmd.add_argument_group("when and how much")
    when.add_argument(
        "--seed", type=int, metavar="N", help="random seed (default: a new one, printed)"
    )
    when.add_argument(
        "--start",
        metavar="ISO-8601",
        help="simulated start, e.g. 2024-03-04T00:00:00Z (default: as late as possible"
        " with the simulated clock never ahead of the real one)",
    )
    when.add_argument(
        "--duration",
        type=_span,
        default=_UNITS["d"],
        metavar="SPAN",
        help="simulated span: a number with ms, s, m, h or d (default 1d)",
    )
    pace = when.add_mutually_exclusive_group()
    pace.add_argument(
        "--speed",
        type=_positive,
        metavar="X",
        help="simulated time runs X times faster than real time (default 1; a day in a"
        " minute is 1440)",
    )
    pace.add_argument(
        "--rate",
        type=_positive,
        metavar="N",
        help="publish N events a second, evenly, whatever their simulated times (load tests)",
    )
    when.add_argument(
        "--people",
        type=non_negative,
        metavar="N",
        help=f"people (default {PEOPLE_PER_SPACE} per space people can reach)",
    )
    when.add_argument(
        "--connections",
        type=at_least_one,
        default=DEFAULT_CONNECTIONS,
        metavar="N",
        help="MQTT connections the DPUs share (default %(default)s; one per DPU when there"
        " are fewer DPUs)",
    )
    when.add_argument(
        "--batch",
        type=_batch,
        default=DEFAULT_BATCH,
        metavar="N",
        help="most events in one backlog upload (default %(default)s)",
    )
    when.add_argument(
        "--drain-timeout",
        type=_positive,
        default=60.0,
        metavar="SECONDS",
        help="at the end, how long to wait for the broker to take every buffered event"
        " (default %(default)s)",
    )
    when.add_argument(
        "--heartbeat",
        type=_positive,
        default=30.0,
        metavar="SECONDS",
        help="how often each DPU repeats its status with its delivery report (what it sent,"
        " for the service to compare with what it stored) while it sends (default %(default)s)",
    )

    faults = cmd.add_argument_group("faults")
    faults.add_argument(
        "--duplicates",
        type=_rate,
        default=0.0,
        metavar="RATE",
        help="share of events published twice",
    )
    faults.add_argument(
        "--reorder",
        type=_rate,
        default=0.0,
        metavar="RATE",
        help="share of events sent after later events of their DPU",
    )
    faults.add_argument(
        "--reorder-window",
        type=at_least_one,
        default=5,
        metavar="N",
        help="a reordered event is overtaken by 1 to N later events (default %(default)s)",
    )
    faults.add_argument(
        "--offline",
        type=_rate,
        default=0.0,
        metavar="RATE",
        help="chance per DPU and simulated hour of an outage; the backlog is uploaded after",
    )
    faults.add_argument(
        "--offline-max",
        type=_outage_span,
        default=30 * _UNITS["m"],
        metavar="SPAN",
        help="longest outage, at least 1m (default 30m)",
    )
    faults.add_argument(
        "--clock-skew",
        type=non_negative,
        default=0,
        metavar="MS",
        help="each DPU's clock is off by a fixed amount up to MS milliseconds either way",
    )
    faults.add_argument(
        "--missed",
        type=_rate,
        default=0.0,
        metavar="RATE",
        help="share of passages no DPU reports (real drift from the truth)",
    )
    faults.add_argument(
        "--move-dpu",
        type=non_negative,
        default=0,
        metavar="N",
        help="N times mid-run, the DPUs of two doorways trade places; the assignment"
        " changes are printed and written with --write-topology",
    )
    cmd.set_defaults(handler=run)


@dataclass(frozen=True)
class Plan:
    """A run worked out in advance: where, who, what happens, and what is true."""

    topology: Topology
    topology_origin: str
    floor: FloorPlan
    population: people.Population
    passages: int
    schedule: Schedule
    pace: Pace
    pace_summary: dict[str, float]


async def run(args: argparse.Namespace) -> int:
    """Plan, write the files, publish (unless ``--dry-run``), print the summary."""
    began = time.monotonic()
    address = None if args.dry_run else parse_broker_url(args.broker)
    passwords = None if args.credentials is None else read_credentials(args.credentials)
    plan = await asyncio.to_thread(prepare, args, now_ms())
    stats: Stats | None = None
    if address is not None:
        # Here, not at the top: headcount's other commands import this module for its flags.
        from headcount.sim.firmware import run_firmware

        _check_clock(plan)
        progress = Progress("simulate: events acknowledged", total=len(plan.schedule.sends))
        stats = await run_firmware(
            plan.schedule,
            address,
            plan.pace,
            batch=args.batch,
            connections=args.connections,
            client_prefix=f"headcount-sim-{uuid.uuid4().hex[:8]}",
            drain_timeout=args.drain_timeout,
            progress=progress,
            credentials=passwords,
            heartbeat=args.heartbeat,
        )
        progress.finish(stats.acknowledged)
    print(json.dumps(summary(args, plan, stats, time.monotonic() - began), indent=2))
    if stats is not None and stats.buffered:
        raise SimulatorError(
            f"{stats.buffered} events were never acknowledged: the broker {address} was"
            " unreachable until the end. Run again with the same --seed and --start to send"
            " them (repeats are harmless), or allow more --drain-timeout"
        )
    return 0


def prepare(args: argparse.Namespace, now: int) -> Plan:
    """Everything up to publishing: the topology, people, faults and truth; the files
    written. Blocking (it reads and writes files): run it off the event loop."""
    topology, origin = _topology(args)
    skew = args.clock_skew
    duration: int = args.duration
    if args.start is not None:
        start = _start(args.start)
    else:
        # The latest whole second at which no event is stamped ahead of the real clock. Faster
        # than real time the simulated clock gains on the real one: its end must not be ahead
        # when due. Slower, it falls behind: its start must not be ahead (it starts now).
        speed = args.speed or 1.0
        lead = 0 if args.rate is not None else min(duration, int(duration / speed))
        start = now - duration + lead - skew
        start -= start % 1000
    end = start + duration
    served = served_doorways(topology, start, end, skew)
    floor = FloorPlan(topology, served)
    for doorway_id, why in floor.unusable.items():
        print(f"simulate: doorway {doorway_id!r} is not used: {why}", file=sys.stderr)
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "big")
    population = people.Population(
        people=args.people if args.people is not None else PEOPLE_PER_SPACE * len(floor.reachable),
        start=start,
        end=end,
        seed=seed,
        min_gap_ms=max(MIN_GAP_MS, 2 * skew + 1000),
    )
    steps = people.walk(floor, topology, population)
    faults = Faults(
        missed=args.missed,
        duplicates=args.duplicates,
        reorder=args.reorder,
        reorder_window=args.reorder_window,
        offline=args.offline,
        offline_max_ms=args.offline_max,
        clock_skew_ms=skew,
        move_dpu=args.move_dpu,
    )
    schedule = build_schedule(
        topology, steps, served, start=start, end=end, seed=seed, faults=faults
    )
    truth = people.true_counts(floor, topology, steps, start)
    pace: Pace
    if args.rate is not None:
        pace = Rate((send.release for send in schedule.sends), args.rate)
        pace_summary = {"rate": args.rate}
    else:
        pace = Speed(start, args.speed or 1.0)
        pace_summary = {"speed": args.speed or 1.0}
    _write(args, schedule, truth)
    moved = changes_toml(schedule)
    if moved:
        written = f" (already in {args.write_topology})" if args.write_topology else ""
        print(f"simulate: DPUs moved; the topology needs these changes{written}:", file=sys.stderr)
        print(moved, file=sys.stderr)
    if args.topology is None and args.write_topology is None and not args.dry_run:
        print(
            "simulate: the topology was generated; to count these events, give it to"
            " headcount serve --topology (write it with --write-topology FILE)",
            file=sys.stderr,
        )
    return Plan(topology, origin, floor, population, len(steps), schedule, pace, pace_summary)


def summary(
    args: argparse.Namespace, plan: Plan, stats: Stats | None, seconds: float
) -> dict[str, Any]:
    """The JSON summary printed at the end (``stats`` None: nothing was published)."""
    schedule = plan.schedule
    published = (
        dict.fromkeys(_PUBLISHED, 0)
        if stats is None
        else {key: getattr(stats, key) for key in _PUBLISHED}
    )
    return {
        "seed": plan.population.seed,
        "start": format_ms(schedule.start),
        "end": format_ms(schedule.end),
        **plan.pace_summary,
        "dry run": args.dry_run,
        "topology": plan.topology_origin,
        "spaces": len(plan.topology.spaces),
        "dpus": len(schedule.dpu_ids),
        "doorways used": len(plan.floor.openings),
        "people": plan.population.people,
        "passages": plan.passages,
        "events": len(schedule.sends),
        **published,
        "faults": {
            "missed": schedule.missed,
            "duplicates": schedule.duplicates,
            "reordered": schedule.reordered,
            "outages": len(schedule.outages),
            "clock skew ms": max((abs(s) for s in schedule.skews.values()), default=0),
            "dpu moves": len(schedule.moves),
        },
        "truth": None if args.truth is None else str(args.truth),
        "seconds": round(seconds, 3),
    }


#: What the firmware reports, in the summary's order (see :class:`Stats`).
_PUBLISHED: Final = (
    "sent", "acknowledged", "buffered", "publishes", "batches", "duplicates", "retransmitted",
    "reconnections",
)  # fmt: skip


def _topology(args: argparse.Namespace) -> tuple[Topology, str]:
    path: Path | None = args.topology
    if path is None:
        spaces = args.spaces or DEFAULT_SPACES
        return synthetic_topology(spaces, args.dpus or spaces, dpu_prefix=args.dpu_prefix), (
            "generated"
        )
    if args.spaces is not None or args.dpus is not None:
        raise SimulatorError(
            "--spaces and --dpus generate a topology: leave them out when giving --topology FILE"
        )
    try:
        data = path.read_bytes()
    except OSError as e:
        raise SimulatorError(f"cannot read topology file {path}: {e.strerror}") from e
    document = document_text(data, source=str(path))
    return Topology.from_toml(document, source=str(path)), str(path)


def _write(args: argparse.Namespace, schedule: Schedule, truth: Truth) -> None:
    try:
        if args.write_topology is not None:
            args.write_topology.write_text(schedule.topology.to_toml(), encoding="utf-8")
        if args.truth is not None:
            truth.save(args.truth)
        if args.out is not None:
            with args.out.open("w", encoding="utf-8") as out:
                for send in schedule.sends:
                    t = send.traversal
                    line = json.dumps(
                        {"dpu_id": t.dpu_id, "seq": t.seq, "ts": t.ts, "direction": t.direction}
                    )
                    out.write(f"{line}\n{line}\n" if send.duplicate else f"{line}\n")
    except OSError as e:
        raise SimulatorError(f"cannot write {e.filename}: {e.strerror}") from e


def _check_clock(plan: Plan) -> None:
    """Refuse to start when events would be stamped further ahead of the real clock, at the
    moment they are published, than the service accepts (it quarantines them as future_ts);
    with --speed, when the simulated clock itself would run that far ahead, events or not."""
    now = now_ms()
    schedule = plan.schedule

    def ahead(ts: int, at: int) -> int:
        return ts - now - int(plan.pace.offset(at) * 1000)

    furthest = max((ahead(s.traversal.ts, s.release) for s in schedule.sends), default=0)
    if isinstance(plan.pace, Speed):
        skew = max(schedule.skews.values(), default=0)
        furthest = max(furthest, ahead(schedule.end + skew, schedule.end))
    if furthest > wire.DEFAULT_MAX_SKEW_MS:
        raise SimulatorError(
            f"events would be stamped up to {furthest / 1000:.0f} s ahead of the real clock when"
            f" published; headcount refuses events more than {wire.DEFAULT_MAX_SKEW_MS // 1000} s"
            " ahead (quarantined as future_ts). Choose an earlier --start, a shorter --duration"
            " or a lower --speed or --rate, or leave --start out"
        )


def _start(text: str) -> int:
    try:
        return parse_iso(text)
    except InvalidTimestampError as e:
        raise SimulatorError(f"--start: {e}") from e


def _span(text: str) -> int:
    match = _SPAN.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a span; give a number with a unit: 500ms, 30s, 15m, 8h or 1d"
        )
    value = round(float(match[1]) * _UNITS[match[2] or "s"])
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is too short: at least 1ms")
    return value


def _outage_span(text: str) -> int:
    value = _span(text)
    if value < _UNITS["m"]:
        raise argparse.ArgumentTypeError(f"{text!r} is too short: an outage lasts at least 1m")
    return value


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number between 0 and 1") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} is not between 0 and 1 (a share: 0.05 is 5%)")
    return value


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{value} must be more than 0")
    return value


def _batch(text: str) -> int:
    value = at_least_one(text)
    if value > wire.DEFAULT_MAX_BATCH:
        raise argparse.ArgumentTypeError(
            f"{value} is too large: the service takes at most {wire.DEFAULT_MAX_BATCH} per payload"
        )
    return value
