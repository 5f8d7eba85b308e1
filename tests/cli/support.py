"""Running ``headcount`` in-process for the command tests, and the seed export they load.

Expected counts are computed here from the CSV file itself with a small reference fold, never
through headcount.
"""

from __future__ import annotations

import asyncio
import csv
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from headcount.cli import main
from headcount.eventstore.store import EventStore
from tests.store_readers import quarantined

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT / "examples" / "seed"
SEED_CSV = SEED / "dpu_data.csv"
SEED_TOPOLOGY = SEED / "topology.toml"
HEADER = '"timestamp","direction","dpu_id"\n'
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SUMMARY_KEYS = {
    "file",
    "rows",
    "stored",
    "duplicate rows in file",
    "already stored",
    "conflicts quarantined",
    "unassigned quarantined",
    "malformed rows",
    "seconds",
    "snapshots written",
}
#: How each DPU of the seed topology reaches each space: ``delta = direction * placement``.
PLACEMENT: dict[str, dict[str, int]] = {"A": {"283": 1, "423": 1}, "B": {"423": -1}}

#: (ts ms, dpu_id, seq, direction), one per distinct row, in fold order.
Event = tuple[int, str, int, int]


# --- helpers ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> Run:
    """``headcount ARGV`` in-process: exit code and what it wrote."""
    capsys.readouterr()
    code = main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return Run(code, out, err)


def import_csv(
    capsys: pytest.CaptureFixture[str],
    store: str,
    csv_path: Path,
    *extra: str | Path,
    topology: Path | None = SEED_TOPOLOGY,
) -> Run:
    args: list[str | Path] = ["import", csv_path, "--store", store]
    if topology is not None:
        args += ["--topology", topology]
    return run(capsys, *args, *extra)


def count(
    capsys: pytest.CaptureFixture[str], store: str, space: str, at: str, *extra: str | Path
) -> Run:
    return run(capsys, "count", space, "--at", at, "--store", store, *extra)


def ms(text: str) -> int:
    """ISO-8601 with an offset to integer milliseconds, independently of headcount."""
    moment = datetime.fromisoformat(text)
    assert moment.tzinfo is not None
    return (moment - EPOCH) // timedelta(milliseconds=1)


def iso(ms_: int) -> str:
    return (
        (EPOCH + timedelta(milliseconds=ms_))
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def read_events(path: Path) -> list[Event]:
    """The distinct rows of a CSV export as events in fold order (ts, dpu_id, seq)."""
    with path.open(newline="", encoding="utf-8") as handle:
        rows = {(r["timestamp"], r["direction"], r["dpu_id"]) for r in csv.DictReader(handle)}
    events: list[Event] = []
    for ts_text, direction_text, dpu_id in rows:
        ts, direction = ms(ts_text), int(direction_text)
        events.append((ts, dpu_id, 2 * ts + (1 if direction > 0 else 0), direction))
    return sorted(events)


@cache
def seed_events() -> tuple[Event, ...]:
    return tuple(read_events(SEED_CSV))


def expected_count(space: str, at: int, events: tuple[Event, ...] | None = None) -> int:
    """The reference fold: deltas in fold order, floored at zero after every event."""
    placement = PLACEMENT[space]
    total = 0
    for ts, dpu_id, _seq, direction in seed_events() if events is None else events:
        if ts > at:
            break
        if dpu_id in placement:
            total = max(0, total + direction * placement[dpu_id])
    return total


def unfloored_sum(space: str, at: int) -> int:
    placement = PLACEMENT[space]
    return sum(
        direction * placement.get(dpu_id, 0)
        for ts, dpu_id, _seq, direction in seed_events()
        if ts <= at
    )


def floor_hits(space: str) -> list[int]:
    """Times of the events where the floor at zero changed the count of ``space``."""
    placement = PLACEMENT[space]
    total, hits = 0, []
    for ts, dpu_id, _seq, direction in seed_events():
        if dpu_id in placement:
            total += direction * placement[dpu_id]
            if total < 0:
                hits.append(ts)
                total = 0
    return hits


def probe_times() -> list[str]:
    """Moments to ask about: the epoch, around the first and last event, where the floor
    matters, and a few fixed moments (one given with a non-UTC offset)."""
    events = seed_events()
    first, last = events[0][0], events[-1][0]
    hit_a, hit_b = floor_hits("A")[0], floor_hits("B")[0]
    moments = {0, first - 1, first, hit_a - 1, hit_a, hit_b, last - 1, last, last + 3_600_000}
    moments |= {ms("2018-02-25T12:00:00Z"), ms("2018-02-27T12:00:00Z")}
    return [*(iso(m) for m in sorted(moments)), "2018-02-26T18:00:00+01:00"]


def write_csv(path: Path, *rows: str) -> Path:
    path.write_text(HEADER + "".join(row + "\n" for row in rows), encoding="utf-8")
    return path


async def _store_contents(url: str) -> tuple[int, list[tuple[str, str, bytes]]]:
    async with await EventStore.open(url) as store:
        entries = await quarantined(store)
        return await store.log.count_traversals(), [
            (q.origin, q.reason, q.payload) for q in entries
        ]


def store_contents(url: str) -> tuple[int, list[tuple[str, str, bytes]]]:
    """How many traversals the store holds, and its quarantined entries (newest first)."""
    return asyncio.run(_store_contents(url))


def help_text(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """``headcount ARGV --help``, its lines joined: a phrase reads the same however wrapped."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--help"])
    assert exited.value.code == 0
    return " ".join(capsys.readouterr().out.split())
