"""``headcount import``: the summary, importing again, malformed and unassigned rows,
``--strict``, and the topology files it reads."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from headcount.eventstore.lease import lease
from headcount.eventstore.store import EventStore
from tests.cli.support import (
    SEED_CSV,
    SEED_TOPOLOGY,
    SUMMARY_KEYS,
    count,
    expected_count,
    import_csv,
    ms,
    run,
    store_contents,
    write_csv,
)

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


# --- options ---------------------------------------------------------------------------------


def test_snapshot_every_below_one_is_refused(capsys: pytest.CaptureFixture[str], db: str) -> None:
    with pytest.raises(SystemExit) as exit_:  # refused by the argument parser, before any work
        import_csv(capsys, db, SEED_CSV, "--snapshot-every", "0")
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--snapshot-every" in err
    assert "at least 1" in err


async def test_an_import_refused_during_a_replay_says_headcount_import_once(
    capsys: pytest.CaptureFixture[str], db: str
) -> None:
    async with (
        await EventStore.open(db) as store,
        lease(store, exclusive=True, holder="headcount replay"),
    ):
        refused = await asyncio.to_thread(import_csv, capsys, db, SEED_CSV)
    assert refused.code == 1
    assert refused.err.startswith("headcount import: a replay is rewriting this store's")
    assert refused.err.count("headcount import:") == 1
