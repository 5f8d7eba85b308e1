"""The CSV importer under fuzzing: generated near-miss exports (wrong headers, bad rows, broken
quoting, bytes that are not UTF-8, huge fields) are read without any exception but
:class:`CsvFormatError`, every skipped row is reported with its line and a reason, and the
``headcount import`` command ends with exit code 0, 1 or 2 and a message, never a traceback.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Final

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from headcount.domain.timefmt import EARLIEST_MS, LATEST_MS
from headcount.importer.csvfile import CsvFormatError, imported_seq, open_export, read_csv
from tests.cli.support import SEED_TOPOLOGY, run
from tests.fuzzing import fuzz

#: Generated files per run: read directly, and through the command (each opens a store).
FILES: Final = 800
COMMANDS: Final = 25

NOT_UTF8: Final = b"28\xff3"
headers = st.sampled_from(
    [
        b'"timestamp","direction","dpu_id"',
        b"timestamp,direction,dpu_id",
        b"\xef\xbb\xbftimestamp,direction,dpu_id",  # a byte order mark
        b"DPU_ID , Timestamp,direction,extra",
        b"timestamp,direction",
        b"timestamp,direction,dpu_id,dpu_id",
        b'"timestamp,direction,dpu_id',
        b"timestamp;direction;dpu_id",
        b"timestamp,direction,dpu_\xffid",
        b"",
        b"\x00",
    ]
)
timestamps = st.sampled_from(
    [
        b"2018-02-26T17:00:00Z",
        b"2018-02-26T17:00:00.123456789+01:00",
        b"2018-02-26T17:00:00",
        b"2018-02-30T17:00:00Z",
        b"0001-01-01T00:00:00Z",
        b"9999-12-31T23:59:59.999Z",
        b"2018-02-26T17:00:00+23:59",
        b"2018-02-26T17:00:00-24:00",
        b"1519664400000",
        b"",
        b"  2018-02-26 17:00Z ",
        b"\xff2018",
    ]
) | st.binary(max_size=12)
directions = st.sampled_from(
    [b"1", b"+1", b"-1", b"0", b"", b" 1", b"1.0", b"-0", b"\xe2\x88\x921"]
)
dpu_ids = st.sampled_from(
    [b"283", b"423", b"999", b"", b" ", NOT_UTF8, "Zähler".encode(), b"d" * 300]
)
separators = st.sampled_from([b",", b", ", b";", b",,", b'","'])


@st.composite
def rows(draw: st.DrawFn) -> bytes:
    fields = [draw(timestamps), draw(directions), draw(dpu_ids)]
    if draw(st.booleans()):
        fields = [b'"' + f.replace(b'"', b'""') + b'"' for f in fields]
    row = draw(separators).join(fields) if draw(st.integers(0, 4)) == 0 else b",".join(fields)
    damage = draw(st.sampled_from(["none"] * 6 + ["quote", "nul", "huge", "cut", "extra", "blank"]))
    if damage == "quote":
        row = b'"' + row
    elif damage == "nul":
        row += b"\x00"
    elif damage == "huge":
        row += b',"' + b"x" * 140_000 + b'"'  # past the csv module's field limit
    elif damage == "cut":
        row = row[: draw(st.integers(0, len(row)))]
    elif damage == "extra":
        row += b"," + draw(st.binary(max_size=8))
    elif damage == "blank":
        row = b"   "
    return row


@st.composite
def exports(draw: st.DrawFn) -> bytes:
    newline = draw(st.sampled_from([b"\n", b"\r\n", b"\r"]))
    lines = [draw(headers), *draw(st.lists(rows(), max_size=6))]
    data = newline.join(lines) + draw(st.sampled_from([b"", newline]))
    if draw(st.integers(0, 9)) == 0:
        data = draw(st.binary(max_size=64))
    return data


def read_file(path: Path) -> None:
    """Read the export the way ``headcount import`` does and check what it reports."""
    with open_export(path) as lines:
        try:
            batches = list(read_csv(lines, batch_size=3))
        except CsvFormatError as error:
            refused: CsvFormatError | None = error
        else:
            refused = None
    if refused is not None:
        assert str(refused).strip()
        return
    for batch in batches:
        for problem in batch.errors:
            assert problem.line >= 1
            assert problem.reason.strip()
        for t in batch.traversals:
            assert t.dpu_id.strip()
            t.dpu_id.encode("utf-8")  # only text that can be stored
            assert EARLIEST_MS <= t.ts <= LATEST_MS
            assert t.seq == imported_seq(t.ts, t.direction)


@fuzz(FILES)
@given(exports())
@example(b"timestamp,direction,dpu_id\n2018-02-26T17:00:00Z,1," + NOT_UTF8 + b"\n")
@example(b"\xfftimestamp,direction,dpu_id\n")
def test_any_export_is_read_or_refused_with_a_message(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "export.csv"
        path.write_bytes(data)
        read_file(path)


def test_a_row_that_is_not_utf8_is_skipped_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "export.csv"
    path.write_bytes(
        b"timestamp,direction,dpu_id\n"
        b"2018-02-26T17:00:00Z,1,283\n"
        b"2018-02-26T17:00:01Z,1," + NOT_UTF8 + b"\n"
        b"2018-02-26T17:00:02Z,-1,283\n"
    )
    with open_export(path) as lines:
        (batch,) = read_csv(lines)
    assert [t.ts % 10_000 for t in batch.traversals] == [0, 2000]
    assert [e.line for e in batch.errors] == [3]
    assert "not valid UTF-8" in batch.errors[0].reason
    assert "0xff" in batch.errors[0].reason


@fuzz(COMMANDS)
@given(exports())
@example(data=b"timestamp,direction,dpu_id\n2018-02-26T17:00:00Z,1," + NOT_UTF8 + b"\n")
def test_the_import_command_never_shows_a_traceback(
    capsys: pytest.CaptureFixture[str], data: bytes
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "export.csv"
        path.write_bytes(data)
        store = f"sqlite+aiosqlite:///{Path(folder) / 's.db'}"
        result = run(capsys, "import", path, "--store", store, "--topology", SEED_TOPOLOGY)
    assert result.code in (0, 1, 2)
    assert "Traceback" not in result.err
    if result.code:
        assert result.err.startswith("headcount import: ")
