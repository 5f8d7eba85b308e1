"""The offline command line: ``headcount import``, ``count`` and ``migrate``.

Most tests call :func:`headcount.cli.main` in-process (it runs its own event loop, so the tests
are plain functions); a few run the real console script in a subprocess. Expected counts are
computed here from the CSV file itself with a small reference fold, never through headcount.
"""

from __future__ import annotations

import asyncio
import csv
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from headcount.cli import main
from headcount.eventstore.store import EventStore
from tests.store_readers import quarantined

ROOT = Path(__file__).resolve().parents[1]
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


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No store or topology from the environment; the default store, if ever reached, lands in
    the test's own directory."""
    monkeypatch.delenv("HEADCOUNT_STORE", raising=False)
    monkeypatch.delenv("HEADCOUNT_TOPOLOGY", raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def db(tmp_path: Path) -> str:
    """The URL of a new SQLite store in the test's directory."""
    return f"sqlite+aiosqlite:///{tmp_path / 's.db'}"


# --- the reference itself --------------------------------------------------------------------


def test_reference_fold_is_discriminating() -> None:
    """The probe times include moments where flooring at zero matters, so a count that forgot
    the floor (or the fold order) would not match by luck."""
    events = seed_events()
    assert len(events) == 530
    assert {dpu for _, dpu, _, _ in events} == {"283", "423"}
    times = [ms(t) for t in probe_times()]
    for space in ("A", "B"):
        assert any(expected_count(space, t) != unfloored_sum(space, t) for t in times)
        assert any(expected_count(space, t) > 0 for t in times)
    assert expected_count("A", 0) == expected_count("B", 0) == 0


# --- import ----------------------------------------------------------------------------------


def test_import_seed_summary_then_again_stores_nothing_new(
    capsys: pytest.CaptureFixture[str], db: str
) -> None:
    first = import_csv(capsys, db, SEED_CSV)
    assert first.code == 0, first.err
    summary = first.json()
    assert set(summary) == SUMMARY_KEYS
    assert summary["file"] == str(SEED_CSV)
    assert summary["rows"] == 563
    assert summary["stored"] == 530
    assert summary["duplicate rows in file"] == 33
    assert summary["malformed rows"] == 0
    assert summary["already stored"] == 0
    assert summary["conflicts quarantined"] == 0
    assert summary["unassigned quarantined"] == 0
    assert "Traceback" not in first.err

    again = import_csv(capsys, db, SEED_CSV)
    assert again.code == 0, again.err
    summary = again.json()
    assert summary["rows"] == 563
    assert summary["stored"] == 0
    assert summary["already stored"] == 530
    assert summary["duplicate rows in file"] == 33
    assert summary["malformed rows"] == 0
    assert store_contents(db) == (530, [])


def test_import_without_topology_uses_the_file_beside_the_csv(
    capsys: pytest.CaptureFixture[str], db: str, tmp_path: Path
) -> None:
    folder = tmp_path / "export"
    folder.mkdir()
    csv_path = Path(shutil.copy(SEED_CSV, folder / "dpu_data.csv"))
    beside = Path(shutil.copy(SEED_TOPOLOGY, folder / "topology.toml"))

    imported = import_csv(capsys, db, csv_path, topology=None)
    assert imported.code == 0, imported.err
    assert imported.json()["stored"] == 530
    assert "using topology" in imported.err
    assert str(beside) in imported.err

    # The store recorded the topology: ``count`` needs neither --topology nor the file.
    beside.unlink()
    at = "2018-02-26T17:00:00Z"
    for space in ("A", "B"):
        answer = count(capsys, db, space, at)
        assert answer.code == 0, answer.err
        assert answer.json()["count"] == expected_count(space, ms(at))


def test_import_without_any_topology_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], db: str, tmp_path: Path
) -> None:
    csv_path = Path(shutil.copy(SEED_CSV, tmp_path / "alone.csv"))
    result = import_csv(capsys, db, csv_path, topology=None)
    assert result.code == 2
    assert "no topology" in result.err
    assert "--topology" in result.err
    assert result.out == ""
    assert store_contents(db)[0] == 0


def test_count_without_any_topology_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], db: str
) -> None:
    result = count(capsys, db, "A", "2018-02-26T17:00:00Z")
    assert result.code == 2
    assert "no topology" in result.err
    assert result.out == ""


# --- count -----------------------------------------------------------------------------------


@pytest.mark.parametrize("snapshot_every", [None, "1", "7"])
def test_count_matches_the_reference_fold(
    capsys: pytest.CaptureFixture[str], db: str, snapshot_every: str | None
) -> None:
    extra = () if snapshot_every is None else ("--snapshot-every", snapshot_every)
    imported = import_csv(capsys, db, SEED_CSV, *extra)
    assert imported.code == 0, imported.err
    written = imported.json()["snapshots written"]
    if snapshot_every is not None:
        # The answers below must come through snapshots, not only a replay of the log.
        assert written > 0

    for at in probe_times():
        for space in ("A", "B"):
            answer = count(capsys, db, space, at)
            assert answer.code == 0, answer.err
            assert answer.out.count("\n") == 1
            result = answer.json()
            assert list(result) == ["space_id", "ts", "count"]
            assert result["space_id"] == space
            assert result["ts"] == iso(ms(at))
            assert result["count"] == expected_count(space, ms(at)), (space, at, snapshot_every)


@pytest.mark.parametrize("first_dpu", ["283", "423"])
def test_late_rows_after_snapshots_change_the_answers(
    capsys: pytest.CaptureFixture[str], db: str, tmp_path: Path, first_dpu: str
) -> None:
    """One DPU's rows first (snapshots every event), then the whole file: the other DPU's rows
    land before those snapshots and every answer must follow the whole file."""
    lines = SEED_CSV.read_text(encoding="utf-8").splitlines()
    part = tmp_path / f"only_{first_dpu}.csv"
    part.write_text(
        "\n".join([lines[0], *(line for line in lines[1:] if line.endswith(f'"{first_dpu}"'))])
        + "\n",
        encoding="utf-8",
    )
    partial = tuple(e for e in seed_events() if e[1] == first_dpu)

    first = import_csv(capsys, db, part, "--snapshot-every", "1")
    assert first.code == 0, first.err
    assert first.json()["stored"] == len(partial)
    assert first.json()["snapshots written"] > 0
    # Before the rest arrives, the partial answers differ from the whole file's somewhere.
    times = probe_times()
    assert any(expected_count("A", ms(t), partial) != expected_count("A", ms(t)) for t in times)

    rest = import_csv(capsys, db, SEED_CSV, "--snapshot-every", "1")
    assert rest.code == 0, rest.err
    assert rest.json()["stored"] == 530 - len(partial)
    for at in times:
        for space in ("A", "B"):
            answer = count(capsys, db, space, at)
            assert answer.code == 0, answer.err
            assert answer.json()["count"] == expected_count(space, ms(at)), (space, at)


def test_count_with_topology_option_on_a_store_that_has_none(
    capsys: pytest.CaptureFixture[str], db: str
) -> None:
    at = "2018-02-26T17:00:00Z"
    answer = count(capsys, db, "A", at, "--topology", SEED_TOPOLOGY)
    assert answer.code == 0, answer.err
    assert answer.json() == {"space_id": "A", "ts": "2018-02-26T17:00:00.000Z", "count": 0}


def test_count_unknown_space(capsys: pytest.CaptureFixture[str], db: str) -> None:
    assert import_csv(capsys, db, SEED_CSV).code == 0
    result = count(capsys, db, "Nowhere", "2018-02-26T17:00:00Z")
    assert result.code == 2
    assert "'Nowhere'" in result.err
    assert "unknown space" in result.err
    assert result.out == ""
    assert "Traceback" not in result.err


@pytest.mark.parametrize(
    ("at", "expected"),
    [
        ("yesterday", "ISO-8601"),
        ("2018-02-26 17:00", "offset"),
        ("2018-02-26T17:00:00", "offset"),
        ("", "ISO-8601"),
    ],
)
def test_count_bad_at(capsys: pytest.CaptureFixture[str], db: str, at: str, expected: str) -> None:
    assert import_csv(capsys, db, SEED_CSV).code == 0
    result = count(capsys, db, "A", at)
    assert result.code != 0
    assert result.out == ""
    assert expected in result.err
    assert "2018-02-26T17:00:00Z" in result.err  # an example of what is expected
    assert "Traceback" not in result.err


def test_count_bad_at_is_a_usage_error(capsys: pytest.CaptureFixture[str], db: str) -> None:
    result = count(capsys, db, "A", "yesterday", "--topology", SEED_TOPOLOGY)
    assert result.code == 2


@pytest.mark.parametrize(
    "at", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "9999-12-31T23:59:59Z"]
)
@pytest.mark.parametrize(
    ("command", "flag"),
    [(("count", "A"), "--at"), (("replay",), "--from"), (("replay", "--dry-run"), "--at")],
    ids=["count", "replay-from", "replay-dry-run"],
)
def test_times_outside_the_supported_range_are_usage_errors(
    capsys: pytest.CaptureFixture[str],
    db: str,
    tmp_path: Path,
    command: tuple[str, ...],
    flag: str,
    at: str,
) -> None:
    """On a space with a daily reset, times whose local day datetime cannot hold: exit 2 with
    the supported range, not an OverflowError's traceback."""
    nightly = tmp_path / "nightly.toml"
    nightly.write_text(
        SEED_TOPOLOGY.read_text().replace(
            'name = "Space A"\n',
            'name = "Space A"\ntime_zone = "Pacific/Kiritimati"\ndaily_reset = "04:00"\n',
        )
    )
    assert import_csv(capsys, db, SEED_CSV, topology=nightly).code == 0
    result = run(capsys, *command, flag, at, "--store", db, "--topology", nightly)
    assert result.code == 2
    assert result.out == ""
    assert result.err.startswith(f"headcount {command[0]}: {flag}: {at!r} is outside")
    assert "0002-01-01T00:00:00.000Z to 9998-12-31T23:59:59.999Z" in result.err
    assert "Traceback" not in result.err


# --- malformed and unassigned rows -----------------------------------------------------------


def _bad_csv(tmp_path: Path) -> Path:
    return write_csv(
        tmp_path / "bad.csv",
        '"2018-02-24T08:45:21.893Z","1","423"',  # line 2: A +1 (B floors at 0)
        '"2018-02-24T09:00:00Z","2","423"',  # line 3: bad direction
        '"yesterday","1","283"',  # line 4: bad timestamp
        '"2018-02-24T10:00:00Z","1","283"',  # line 5: A +1
    )


def test_malformed_rows_are_skipped_and_reported(
    capsys: pytest.CaptureFixture[str], db: str, tmp_path: Path
) -> None:
    bad = _bad_csv(tmp_path)
    result = import_csv(capsys, db, bad)
    assert result.code == 0, result.err
    summary = result.json()
    assert summary["rows"] == 4
    assert summary["stored"] == 2
    assert summary["malformed rows"] == 2
    assert f"{bad}:3:" in result.err
    assert "'2'" in result.err
    assert f"{bad}:4:" in result.err
    assert "'yesterday'" in result.err
    assert f"{bad}:2:" not in result.err
    assert f"{bad}:5:" not in result.err
    assert store_contents(db)[0] == 2
    assert count(capsys, db, "A", "2018-02-24T11:00:00Z").json()["count"] == 2


def test_strict_import_of_malformed_rows_writes_no_rows(
    capsys: pytest.CaptureFixture[str], db: str, tmp_path: Path
) -> None:
    bad = _bad_csv(tmp_path)
    result = import_csv(capsys, db, bad, "--strict")
    assert result.code != 0
    assert result.out == ""
    assert f"{bad}:3:" in result.err
    assert f"{bad}:4:" in result.err
    assert "--strict" in result.err
    assert "Traceback" not in result.err
    assert store_contents(db) == (0, [])
    answer = count(capsys, db, "A", "2018-02-24T11:00:00Z", "--topology", SEED_TOPOLOGY)
    assert answer.code == 0, answer.err
    assert answer.json()["count"] == 0


def test_strict_import_of_a_clean_file(capsys: pytest.CaptureFixture[str], db: str) -> None:
    result = import_csv(capsys, db, SEED_CSV, "--strict")
    assert result.code == 0, result.err
    assert result.json()["stored"] == 530


def test_strict_abort_leaves_the_stores_topology_alone(
    capsys: pytest.CaptureFixture[str], db: str, tmp_path: Path
) -> None:
    assert import_csv(capsys, db, SEED_CSV).code == 0
    other = tmp_path / "other.toml"
    other.write_text(
        SEED_TOPOLOGY.read_text(encoding="utf-8") + '\n[[spaces]]\nid = "C"\nname = "Space C"\n',
        encoding="utf-8",
    )
    aborted = import_csv(capsys, db, _bad_csv(tmp_path), "--strict", topology=other)
    assert aborted.code != 0
    # Nothing was written, so the store's topology is still the seed one, without space C.
    result = run(capsys, "count", "C", "--store", db)
    assert result.code == 2


def test_rows_of_unassigned_dpus_are_quarantined(
    capsys: pytest.CaptureFixture[str], db: str, tmp_path: Path
) -> None:
    rows = write_csv(
        tmp_path / "unassigned.csv",
        '"2017-12-31T23:00:00Z","1","283"',  # before 283's assignment starts
        '"2018-02-24T10:00:00Z","1","999"',  # a DPU the topology does not know
        '"2018-02-24T10:00:00Z","1","283"',
    )
    result = import_csv(capsys, db, rows)
    assert result.code == 0, result.err
    summary = result.json()
    assert summary["rows"] == 3
    assert summary["stored"] == 1
    assert summary["unassigned quarantined"] == 2
    assert summary["malformed rows"] == 0
    stored, quarantined = store_contents(db)
    assert stored == 1
    assert len(quarantined) == 2
    reasons = " ".join(reason for _, reason, _ in quarantined)
    assert "'999'" in reasons
    assert "'283'" in reasons
    payloads = [json.loads(payload) for _, _, payload in quarantined]
    assert {p["dpu_id"] for p in payloads} == {"283", "999"}
    assert count(capsys, db, "A", "2018-02-24T11:00:00Z").json()["count"] == 1


# --- topology files --------------------------------------------------------------------------


def test_invalid_topology_file(capsys: pytest.CaptureFixture[str], db: str, tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text(
        SEED_TOPOLOGY.read_text(encoding="utf-8").replace('space = "B"', 'space = "Q"'),
        encoding="utf-8",
    )
    result = import_csv(capsys, db, SEED_CSV, topology=broken)
    assert result.code != 0
    assert result.out == ""
    assert str(broken) in result.err
    assert '"Q"' in result.err
    assert "not defined" in result.err
    assert "Traceback" not in result.err
    assert store_contents(db)[0] == 0
    # Nor was the broken topology recorded: the store still has none.
    assert count(capsys, db, "A", "2018-02-26T17:00:00Z").code == 2


def test_topology_file_that_is_not_toml(
    capsys: pytest.CaptureFixture[str], db: str, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("[[spaces]\nid = ", encoding="utf-8")
    result = import_csv(capsys, db, SEED_CSV, topology=broken)
    assert result.code != 0
    assert "TOML" in result.err
    assert str(broken) in result.err
    assert store_contents(db)[0] == 0


def test_missing_topology_file(capsys: pytest.CaptureFixture[str], db: str, tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    result = import_csv(capsys, db, SEED_CSV, topology=missing)
    assert result.code == 2
    assert result.out == ""
    assert "cannot read topology file" in result.err
    assert str(missing) in result.err
    assert "Traceback" not in result.err
    assert store_contents(db)[0] == 0


# --- options, migrate, help ------------------------------------------------------------------


def test_snapshot_every_below_one_is_refused(capsys: pytest.CaptureFixture[str], db: str) -> None:
    with pytest.raises(SystemExit) as exit_:  # refused by the argument parser, before any work
        import_csv(capsys, db, SEED_CSV, "--snapshot-every", "0")
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--snapshot-every" in err
    assert "at least 1" in err


def test_migrate_a_fresh_store(capsys: pytest.CaptureFixture[str], db: str, tmp_path: Path) -> None:
    assert not (tmp_path / "s.db").exists()
    result = run(capsys, "migrate", "--store", db)
    assert result.code == 0, result.err
    assert (tmp_path / "s.db").is_file()
    assert "current schema" in result.err
    assert store_contents(db) == (0, [])
    # Twice is harmless.
    assert run(capsys, "migrate", "--store", db).code == 0


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for command in ("import", "count", "migrate"):
        assert command in out


def test_import_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["import", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for option in ("--strict", "--snapshot-every", "--topology", "--store"):
        assert option in out


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([])
    assert exited.value.code == 2
    assert "COMMAND" in capsys.readouterr().err


# --- the real console script -----------------------------------------------------------------


def _command() -> list[str]:
    """The installed ``headcount`` script of this interpreter's environment, else the same entry
    point through ``python -c``."""
    script = shutil.which("headcount", path=str(Path(sys.executable).parent)) or shutil.which(
        "headcount"
    )
    if script is not None:
        return [script]
    return [sys.executable, "-c", "from headcount.cli import main; raise SystemExit(main())"]


def _subprocess(tmp_path: Path, *argv: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*_command(), *(str(arg) for arg in argv)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )


def test_console_script_import_and_count(db: str, tmp_path: Path) -> None:
    imported = _subprocess(tmp_path, "import", SEED_CSV, "--topology", SEED_TOPOLOGY, "--store", db)
    assert imported.returncode == 0, imported.stderr
    summary = json.loads(imported.stdout)
    assert (summary["rows"], summary["stored"]) == (563, 530)

    at = "2018-02-26T17:00:00Z"
    counted = _subprocess(tmp_path, "count", "B", "--at", at, "--store", db)
    assert counted.returncode == 0, counted.stderr
    assert json.loads(counted.stdout) == {
        "space_id": "B",
        "ts": "2018-02-26T17:00:00.000Z",
        "count": expected_count("B", ms(at)),
    }


def test_console_script_errors_without_traceback(db: str, tmp_path: Path) -> None:
    bad_at = _subprocess(
        tmp_path,
        "count",
        "A",
        "--at",
        "2018-02-26T17:00",
        "--topology",
        SEED_TOPOLOGY,
        "--store",
        db,
    )
    assert bad_at.returncode != 0
    assert "offset" in bad_at.stderr
    assert "Traceback" not in bad_at.stderr
    assert bad_at.stdout == ""

    unknown = _subprocess(tmp_path, "count", "Nowhere", "--topology", SEED_TOPOLOGY, "--store", db)
    assert unknown.returncode == 2
    assert "'Nowhere'" in unknown.stderr
    assert "Traceback" not in unknown.stderr
