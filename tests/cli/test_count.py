"""``headcount count``: answers match a reference fold of the CSV, through snapshots or not;
bad moments and unknown spaces are usage errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.support import (
    SEED_CSV,
    SEED_TOPOLOGY,
    count,
    expected_count,
    help_text,
    import_csv,
    iso,
    ms,
    probe_times,
    seed_events,
    unfloored_sum,
)

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


# --- count -----------------------------------------------------------------------------------


def test_count_without_any_topology_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], db: str
) -> None:
    result = count(capsys, db, "A", "2018-02-26T17:00:00Z")
    assert result.code == 2
    assert "no topology" in result.err
    assert result.out == ""


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


def test_count_with_a_topology_file_records_nothing(
    capsys: pytest.CaptureFixture[str], db: str
) -> None:
    """``count --topology`` answers under the file and leaves the store's topology alone, as
    its help says (import, replay and serve record it: see test_main)."""
    assert "left as it is" in help_text(capsys, "count")
    assert "becomes the store's current topology" not in help_text(capsys, "count")
    at = "2018-02-26T17:00:00Z"
    assert count(capsys, db, "A", at, "--topology", SEED_TOPOLOGY).code == 0
    still_none = count(capsys, db, "A", at)
    assert still_none.code == 2
    assert "no topology" in still_none.err


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
