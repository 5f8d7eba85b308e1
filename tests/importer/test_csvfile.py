"""The DPU CSV importer: parsing, row errors, duplicates and batching."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headcount.domain.events import Traversal
from headcount.domain.timefmt import format_ms, parse_iso
from headcount.errors import HeadcountError
from headcount.importer.csvfile import (
    CsvBatch,
    CsvFormatError,
    RowError,
    imported_seq,
    read_csv,
)

SEED = Path(__file__).resolve().parents[2] / "examples" / "seed" / "dpu_data.csv"
HEADER = '"timestamp","direction","dpu_id"\n'
TS = "2018-02-26T16:06:02.903Z"


def _read_all(lines: list[str], batch_size: int = 10_000) -> list[CsvBatch]:
    return list(read_csv(lines, batch_size=batch_size))


def _traversals(batches: list[CsvBatch]) -> list[Traversal]:
    return [t for batch in batches for t in batch.traversals]


def _errors(batches: list[CsvBatch]) -> list[RowError]:
    return [e for batch in batches for e in batch.errors]


def _csv(*rows: str) -> list[str]:
    return [HEADER, *(row + "\n" for row in rows)]


def _seed_lines() -> list[str]:
    with SEED.open(newline="") as handle:
        return list(handle)


# --- the seed file ---------------------------------------------------------------------------


def test_seed_file_rows_duplicates_and_events() -> None:
    lines = _seed_lines()
    # Independent count: the seed has no commas inside fields, so splitting and unquoting by
    # hand gives the raw (timestamp, direction, dpu_id) tuples without the csv module.
    raw = [
        tuple(field.strip().strip('"') for field in line.rstrip("\r\n").split(","))
        for line in lines[1:]
        if line.strip()
    ]
    counts = Counter(raw)
    expected_duplicates = sum(n - 1 for n in counts.values())

    batches = _read_all(lines)
    traversals = _traversals(batches)

    assert len(raw) == 563
    assert sum(b.rows for b in batches) == 563
    assert _errors(batches) == []
    assert sum(b.duplicates for b in batches) == expected_duplicates
    assert expected_duplicates == 33
    assert len(traversals) == len(counts) == 563 - expected_duplicates
    assert {t.dpu_id for t in traversals} == {"283", "423"}
    assert {(t.dpu_id, t.ts, t.direction) for t in traversals} == {
        (dpu, parse_iso(ts), int(direction)) for ts, direction, dpu in counts
    }


def test_seed_file_first_row() -> None:
    first = _traversals(_read_all(_seed_lines()))[0]
    ts = parse_iso("2018-02-24T08:45:21.893Z")
    assert first == Traversal(dpu_id="423", seq=2 * ts + 1, ts=ts, direction=1)


def test_rereading_gives_identical_seqs() -> None:
    lines = _seed_lines()
    first = _traversals(_read_all(lines))
    second = _traversals(_read_all(lines, batch_size=7))
    assert first == second
    assert len({t.key for t in first}) == len(first)


# --- quoting, directions, header -------------------------------------------------------------


def test_mixed_quoting_reads_the_same_and_counts_as_duplicate() -> None:
    batches = _read_all(_csv(f'"{TS}","1","283"', f'"{TS}",1,"283"', f"{TS},-1,283"))
    traversals = _traversals(batches)
    ts = parse_iso(TS)
    assert traversals == [
        Traversal("283", imported_seq(ts, 1), ts, 1),
        Traversal("283", imported_seq(ts, -1), ts, -1),
    ]
    assert batches[0].duplicates == 1
    assert batches[0].rows == 3


@pytest.mark.parametrize(
    ("text", "direction"),
    [("1", 1), ("-1", -1), ("+1", 1), (" 1 ", 1), ('" -1 "', -1), ('"+1"', 1)],
)
def test_accepted_direction_spellings(text: str, direction: int) -> None:
    traversals = _traversals(_read_all(_csv(f"{TS},{text},283")))
    assert [t.direction for t in traversals] == [direction]


def test_dpu_id_is_kept_as_written_but_stripped() -> None:
    traversals = _traversals(_read_all(_csv(f'{TS},1," 0042 "')))
    assert [t.dpu_id for t in traversals] == ["0042"]


def test_header_columns_in_any_order_with_extra_columns() -> None:
    lines = [
        "note,DPU_ID, direction ,timestamp\n",
        f"hello,283,1,{TS}\n",
        f'"",423,-1,"{TS}"\n',
    ]
    ts = parse_iso(TS)
    assert _traversals(_read_all(lines)) == [
        Traversal("283", imported_seq(ts, 1), ts, 1),
        Traversal("423", imported_seq(ts, -1), ts, -1),
    ]


def test_header_with_byte_order_mark() -> None:
    lines = ["\ufeff" + HEADER, f"{TS},1,283\n"]
    assert len(_traversals(_read_all(lines))) == 1


def test_missing_columns_raise_with_names_and_expected_header() -> None:
    with pytest.raises(CsvFormatError) as info:
        read_csv(["timestamp,dpu\n", f"{TS},283\n"])
    message = str(info.value)
    assert "direction" in message
    assert "dpu_id" in message
    assert '"timestamp","direction","dpu_id"' in message
    assert isinstance(info.value, HeadcountError)


def test_header_is_checked_before_iteration() -> None:
    # The error surfaces at the call, so a caller can refuse the file before doing any work.
    with pytest.raises(CsvFormatError, match="timestamp"):
        read_csv(["direction,dpu_id\n"])


def test_repeated_required_column_is_refused() -> None:
    with pytest.raises(CsvFormatError, match="more than once"):
        read_csv(["timestamp,direction,dpu_id,direction\n"])


def test_malformed_header_is_a_format_error() -> None:
    with pytest.raises(CsvFormatError, match="line 2 is not valid CSV"):
        read_csv(["\n", '"timestamp"x,direction,dpu_id\n'])


@pytest.mark.parametrize("lines", [[], ["\n", "  \n"]])
def test_empty_file_is_a_format_error(lines: list[str]) -> None:
    with pytest.raises(CsvFormatError, match="empty"):
        read_csv(lines)


def test_header_only_yields_nothing() -> None:
    assert _read_all([HEADER]) == []


def test_batch_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        read_csv([HEADER], batch_size=0)


# --- row errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("row", "fragment"),
    [
        (f"{TS},1", "2 field(s) but the header has 3"),
        (f"{TS},1,283,extra", "4 field(s) but the header has 3"),
        (",1,283", "timestamp is empty"),
        ('"",1,283', "timestamp is empty"),
        ("2018-02-26T16:06:02.903,1,283", "has no UTC offset"),
        ("yesterday,1,283", "'yesterday' is not an ISO-8601 timestamp"),
        (f"{TS},2,283", "direction '2' is not 1 or -1"),
        (f"{TS},1.0,283", "direction '1.0' is not 1 or -1"),
        (f"{TS},,283", "direction is empty"),
        (f'{TS},"",283', "direction is empty"),
        (f"{TS},1,", "dpu_id is empty"),
        (f'{TS},1,"  "', "dpu_id is empty"),
    ],
)
def test_row_errors_carry_physical_line_and_reason(row: str, fragment: str) -> None:
    lines = [HEADER, f"{TS},1,283\n", "\n", row + "\n", f"{TS},-1,283\n"]
    batches = _read_all(lines)
    errors = _errors(batches)
    assert len(errors) == 1
    assert errors[0].line == 4
    assert fragment in errors[0].reason
    assert len(_traversals(batches)) == 2
    assert sum(b.rows for b in batches) == 3


def test_several_problems_in_one_row_are_all_reported() -> None:
    errors = _errors(_read_all(_csv("soon,0,")))
    assert [e.line for e in errors] == [2, 2, 2]
    reasons = " | ".join(e.reason for e in errors)
    assert "timestamp" in reasons
    assert "direction '0'" in reasons
    assert "dpu_id is empty" in reasons


def test_blank_lines_are_skipped_silently() -> None:
    lines = ["\n", HEADER, "\n", "   \n", f"{TS},1,283\n", "\n"]
    batches = _read_all(lines)
    assert _errors(batches) == []
    assert sum(b.rows for b in batches) == 1
    assert len(_traversals(batches)) == 1


def test_line_numbers_count_lines_inside_quoted_fields() -> None:
    lines = [
        "timestamp,direction,dpu_id,note\n",
        f'{TS},1,283,"two\n',
        'lines"\n',
        f"{TS},7,283,x\n",
    ]
    errors = _errors(_read_all(lines))
    assert [e.line for e in errors] == [4]


def test_unclosed_quote_at_the_end_names_the_span() -> None:
    lines = [HEADER, f"{TS},-1,283\n", f'{TS},1,"283\n', f"{TS},-1,423\n", f"{TS},1,423\n"]
    batches = _read_all(lines)
    errors = _errors(batches)
    assert len(errors) == 1
    assert errors[0].line == 3
    assert "unclosed quote" in errors[0].reason
    assert "line 5" in errors[0].reason
    assert len(_traversals(batches)) == 1


def test_unclosed_quote_in_the_middle_resumes_after_the_bad_row() -> None:
    lines = [HEADER, f'{TS},1,"283\n', f'"{TS}",-1,"283"\n', f"{TS},1,423\n"]
    batches = _read_all(lines)
    errors = _errors(batches)
    assert [e.line for e in errors] == [2]
    assert "line 3" in errors[0].reason
    assert [t.dpu_id for t in _traversals(batches)] == ["423"]


def test_text_after_a_closing_quote_is_a_row_error() -> None:
    lines = [HEADER, f'{TS},"1"x,283\n', f"{TS},-1,283\n"]
    batches = _read_all(lines)
    errors = _errors(batches)
    assert [e.line for e in errors] == [2]
    assert "not valid CSV" in errors[0].reason
    assert "unclosed" not in errors[0].reason
    assert len(_traversals(batches)) == 1


# --- batching --------------------------------------------------------------------------------


def test_small_batches_give_the_same_events_as_one_batch() -> None:
    lines = _seed_lines()
    whole = _read_all(lines)
    progress: list[int] = []
    small = list(read_csv(lines, batch_size=3, on_progress=progress.append))

    assert len(whole) == 1
    assert _traversals(small) == _traversals(whole)
    assert all(len(b.traversals) <= 3 for b in small)
    assert all(len(b.traversals) == 3 for b in small[:-1])
    assert sum(b.rows for b in small) == whole[0].rows == 563
    assert sum(b.duplicates for b in small) == whole[0].duplicates
    assert len(progress) == len(small)
    assert progress == sorted(progress)
    assert progress[-1] == 563


def test_progress_counts_rows_per_batch_cumulatively() -> None:
    rows = [f"{format_ms(1000 * i)},1,283" for i in range(5)]
    progress: list[int] = []
    batches = list(read_csv(_csv(*rows), batch_size=2, on_progress=progress.append))
    assert [len(b.traversals) for b in batches] == [2, 2, 1]
    assert [b.rows for b in batches] == [2, 2, 1]
    assert progress == [2, 4, 5]


def test_duplicates_across_batch_boundaries_are_dropped() -> None:
    a, b, c = (f"{format_ms(1000 * i)},1,283" for i in range(3))
    batches = _read_all(_csv(a, b, c, a, b, c, c), batch_size=2)
    traversals = _traversals(batches)
    assert len(traversals) == 3
    assert sum(x.duplicates for x in batches) == 4
    assert sum(x.rows for x in batches) == 7


def test_errors_alone_cut_batches() -> None:
    batches = _read_all(_csv(*[f"{TS},9,283"] * 5), batch_size=2)
    assert [len(b.errors) for b in batches] == [2, 2, 1]
    assert [e.line for e in _errors(batches)] == [2, 3, 4, 5, 6]


# --- the derived seq -------------------------------------------------------------------------


def test_imported_seq_separates_directions_and_orders_by_time() -> None:
    assert imported_seq(10, 1) != imported_seq(10, -1)
    assert imported_seq(10, 1) < imported_seq(11, -1)
    assert imported_seq(10, -1) == 20
    assert imported_seq(10, 1) == 21


@given(
    st.integers(min_value=0, max_value=2**45),
    st.integers(min_value=1, max_value=2**20),
    st.sampled_from([1, -1]),
    st.sampled_from([1, -1]),
)
def test_imported_seq_is_strictly_increasing_in_ts(ts: int, gap: int, d1: int, d2: int) -> None:
    assert imported_seq(ts, d1) < imported_seq(ts + gap, d2)


_ROW = st.tuples(
    st.sampled_from(["283", "423", "a-1"]),
    st.integers(min_value=0, max_value=5_000),
    st.sampled_from([1, -1]),
)


@settings(max_examples=200)
@given(
    st.lists(_ROW, min_size=1, max_size=12).flatmap(
        lambda pool: st.lists(st.sampled_from(pool), max_size=40)
    ),
    st.integers(min_value=1, max_value=6),
    st.data(),
)
def test_yielded_traversals_are_the_distinct_rows(
    rows: list[tuple[str, int, int]], batch_size: int, data: st.DataObject
) -> None:
    lines = [HEADER]
    for dpu, ts, direction in rows:
        quote = data.draw(st.booleans())
        d = f'"{direction}"' if quote else str(direction)
        lines.append(f'"{format_ms(ts)}",{d},"{dpu}"\n')

    batches = _read_all(lines, batch_size=batch_size)
    traversals = _traversals(batches)

    assert {(t.dpu_id, t.ts, t.direction) for t in traversals} == set(rows)
    assert len(traversals) == len(set(rows))
    assert sum(b.duplicates for b in batches) == len(rows) - len(set(rows))
    assert sum(b.rows for b in batches) == len(rows)
    assert _errors(batches) == []
    assert all(t.seq == imported_seq(t.ts, t.direction) for t in traversals)
