"""The truth file: written once per change, read back to answer "how many in S at ts"."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from headcount.domain.timefmt import parse_iso
from headcount.errors import UnknownSpaceError
from headcount.sim.errors import TruthFileError
from headcount.sim.truth import Truth
from tests.sim.reference import headquarters, plan_run

T0 = parse_iso("2024-03-05T00:00:00Z")


def test_count_is_the_last_change_at_or_before_the_time() -> None:
    truth = Truth(T0, {"A": [(T0, 0), (T0 + 10, 1), (T0 + 10, 2), (T0 + 20, 1)], "B": [(T0, 0)]})
    assert truth.spaces == ("A", "B")
    assert truth.count("A", T0 - 1) == 0  # before the simulation nobody is in
    assert truth.count("A", T0 + 9) == 0
    assert truth.count("A", T0 + 10) == 2  # after every change in that millisecond
    assert truth.count("A", T0 + 15) == 2
    assert truth.count("A", T0 + 10**9) == 1
    assert truth.final("A") == 1
    assert truth.final("B") == 0
    with pytest.raises(UnknownSpaceError, match="'C'"):
        truth.count("C", T0)


def test_a_simulated_truth_survives_the_file(tmp_path: Path) -> None:
    run = plan_run(headquarters(), people=50)
    path = tmp_path / "truth.csv"
    run.truth.save(path)
    lines = path.read_text().splitlines()
    assert lines[0] == "ts,space_id,count"
    assert lines[1] == "2024-03-05T00:00:00.000Z,HQ,0"
    assert len(lines) == 1 + sum(len(run.truth.changes(s)) for s in run.truth.spaces)
    loaded = Truth.load(path)
    assert loaded.start == run.truth.start
    assert set(loaded.spaces) == set(run.truth.spaces)
    for space_id in run.truth.spaces:
        assert loaded.changes(space_id) == run.truth.changes(space_id)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        pytest.param("", "the first line must be 'ts,space_id,count'", id="empty"),
        pytest.param("time,space,n\n", "the first line must be", id="header"),
        pytest.param("ts,space_id,count\n", "no rows after the header", id="no-rows"),
        pytest.param("ts,space_id,count\nnope,A,1\n", ":2: 'nope' is not an ISO", id="ts"),
        pytest.param("ts,space_id,count\n2024-03-05T00:00:00Z,A,x\n", ":2: count 'x'", id="count"),
        pytest.param("ts,space_id,count\n2024-03-05T00:00:00Z,A\n", ":2: expected 3", id="short"),
        pytest.param(
            "ts,space_id,count\n2024-03-05T00:00:01Z,A,0\n2024-03-05T00:00:00Z,A,1\n",
            ":3: rows of space 'A' go back in time",
            id="order",
        ),
    ],
)
def test_a_bad_truth_file_names_the_line(text: str, problem: str) -> None:
    with pytest.raises(TruthFileError, match=problem):
        Truth.read(io.StringIO(text), source="t.csv")


def test_a_missing_truth_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(TruthFileError, match=r"cannot read truth file .*nothing\.csv"):
        Truth.load(tmp_path / "nothing.csv")


def test_a_truth_file_loads_from_a_str_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("truth.csv").write_text("ts,space_id,count\n2024-03-05T00:00:00Z,A,0\n")
    assert Truth.load("truth.csv").spaces == ("A",)
    with pytest.raises(TruthFileError, match=r"cannot read truth file missing\.csv"):
        Truth.load("missing.csv")
