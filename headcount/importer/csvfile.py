"""Reading the DPU CSV export into traversals, in bounded batches.

The export has one row per traversal with the columns ``timestamp`` (ISO-8601 with a UTC
offset), ``direction`` (``1`` or ``-1``) and ``dpu_id``. Rows carry no per-DPU sequence number,
so :func:`imported_seq` derives one from the row itself. Exact duplicate rows are dropped;
rows that cannot be read are reported as :class:`RowError` and skipped, so one bad row never
stops an import. That includes a row with bytes that are not UTF-8: :func:`open_export` opens
a file so that such bytes reach the row check instead of stopping the whole read.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, TextIO

from headcount.domain.events import Direction, Traversal
from headcount.domain.timefmt import parse_iso
from headcount.errors import HeadcountError, InvalidTimestampError

if TYPE_CHECKING:
    from _csv import Reader
    from collections.abc import Callable, Iterable, Iterator

REQUIRED_COLUMNS = ("timestamp", "direction", "dpu_id")
EXPECTED_HEADER = ",".join(f'"{name}"' for name in REQUIRED_COLUMNS)

_POSITIVE = frozenset({"1", "+1"})
_NEGATIVE = frozenset({"-1"})
_TIMESTAMP_EXAMPLE = "2018-02-26T17:00:00Z"


class CsvFormatError(HeadcountError):
    """The file as a whole cannot be imported: no header, or a required column is missing."""


@dataclass(frozen=True, slots=True)
class RowError:
    """One row that was skipped: ``line`` is the 1-based physical line where the row starts,
    ``reason`` a sentence saying what is wrong with it."""

    line: int
    reason: str


@dataclass(frozen=True, slots=True)
class CsvBatch:
    """What one stretch of the file produced.

    ``traversals`` are the valid rows not seen earlier in the file, in file order; ``errors``
    the rows skipped in this stretch; ``rows`` the data rows read in it (valid, duplicate or
    not); ``duplicates`` the rows dropped because an earlier row had the same ``dpu_id``,
    ``timestamp`` and ``direction``.
    """

    traversals: list[Traversal]
    errors: list[RowError]
    rows: int
    duplicates: int


class _Columns(NamedTuple):
    """Where the required columns sit in each row, and how many fields a row must have."""

    timestamp: int
    direction: int
    dpu_id: int
    width: int


def imported_seq(ts: int, direction: int) -> int:
    """CSV rows carry no per-DPU seq, so one is derived: ``2*ts + (1 if direction > 0 else 0)``.

    Strictly increasing in ``ts`` per DPU, the same on every re-import (so importing a file
    twice stores nothing new), and two rows that differ only in direction stay two events while
    exact duplicate rows collapse into one.
    """
    return 2 * ts + (1 if direction > 0 else 0)


def open_export(path: Path) -> TextIO:
    """``path`` opened for :func:`read_csv`: UTF-8, with any byte that is not UTF-8 kept as a
    lone surrogate (``surrogateescape``), so that the row holding it is reported and skipped
    rather than ending the import with a decoding error."""
    return path.open(encoding="utf-8", errors="surrogateescape", newline="")


def _not_utf8(fields: list[str]) -> str | None:
    """The first byte of the row that was not UTF-8 (see :func:`open_export`), as ``0xff``."""
    for text in fields:
        for char in text:
            if 0xDC80 <= ord(char) <= 0xDCFF:
                return f"0x{ord(char) - 0xDC00:02x}"
    return None


def read_csv(
    lines: Iterable[str],
    *,
    batch_size: int = 10_000,
    on_progress: Callable[[int], None] | None = None,
) -> Iterator[CsvBatch]:
    """Stream a DPU CSV export as batches of traversals.

    ``lines`` is any iterable of text lines, e.g. a file opened with ``newline=""``. The header
    is read and checked at once: a missing column raises :class:`CsvFormatError` before any
    batch is produced. After that the rows are read lazily; each batch holds up to
    ``batch_size`` new traversals plus the errors found since the previous batch (a batch is
    also cut when ``batch_size`` errors have piled up, so memory stays bounded however bad the
    file). Memory apart from the batch is one ``(dpu_id, seq)`` key per distinct row, used to
    drop duplicates anywhere in the file. ``on_progress`` receives the number of data rows read
    so far, once per batch, just before the batch is yielded. Blank lines are skipped silently.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    # ``strict`` turns malformed quoting (an unclosed quote, text after a closing quote) into a
    # row error instead of silently gluing lines together.
    reader = csv.reader(_without_bom(lines), skipinitialspace=True, strict=True)
    columns = _read_header(reader)
    return _batches(reader, columns, batch_size, on_progress)


def _without_bom(lines: Iterable[str]) -> Iterator[str]:
    """The lines with a UTF-8 byte order mark removed from the first one (spreadsheet exports
    often start with one, and it would hide the quotes around the first column name)."""
    iterator = iter(lines)
    first = next(iterator, None)
    if first is None:
        return
    yield first.removeprefix("\ufeff")
    yield from iterator


def _is_blank(fields: list[str]) -> bool:
    return not fields or (len(fields) == 1 and not fields[0].strip())


def _read_header(reader: Reader) -> _Columns:
    """The first non-blank row, checked for the required columns (any order, any case)."""
    try:
        for fields in reader:
            if not _is_blank(fields):
                break
        else:
            raise CsvFormatError(f"the file is empty; expected a header such as {EXPECTED_HEADER}")
    except csv.Error as exc:
        raise CsvFormatError(
            f"the header on line {reader.line_num} is not valid CSV ({exc}); "
            f"expected a header such as {EXPECTED_HEADER}"
        ) from None
    names = [field.strip().lower() for field in fields]
    repeated = sorted(
        {name for name in names if name in REQUIRED_COLUMNS and names.count(name) > 1}
    )
    if repeated:
        raise CsvFormatError(
            f"the header names column(s) {', '.join(repeated)} more than once; "
            f"expected each of {', '.join(REQUIRED_COLUMNS)} once, e.g. {EXPECTED_HEADER}"
        )
    missing = [name for name in REQUIRED_COLUMNS if name not in names]
    if missing:
        raise CsvFormatError(
            f"the header lacks the column(s) {', '.join(missing)}; "
            f"expected a header such as {EXPECTED_HEADER} (any order, extra columns allowed), "
            f"got {','.join(fields)!r}"
        )
    return _Columns(
        timestamp=names.index("timestamp"),
        direction=names.index("direction"),
        dpu_id=names.index("dpu_id"),
        width=len(names),
    )


def _batches(
    reader: Reader,
    columns: _Columns,
    batch_size: int,
    on_progress: Callable[[int], None] | None,
) -> Iterator[CsvBatch]:
    # ``line_num`` counts physical lines consumed so far, so a row starts one past the count
    # before it was read (rows may span lines when a quoted field holds a newline).
    line_num = reader.line_num
    seen: set[tuple[str, int]] = set()
    traversals: list[Traversal] = []
    errors: list[RowError] = []
    rows = duplicates = total_rows = 0

    while True:
        start = line_num + 1
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            line_num = reader.line_num
            rows += 1
            total_rows += 1
            reason = f"the row is not valid CSV ({exc})"
            if line_num > start:
                reason += f"; it runs on to line {line_num}, so check for an unclosed quote"
            errors.append(RowError(start, reason))
        else:
            line_num = reader.line_num
            if _is_blank(fields):
                continue
            rows += 1
            total_rows += 1
            parsed = _parse_row(fields, columns, start, line_num)
            if isinstance(parsed, Traversal):
                if parsed.key in seen:
                    duplicates += 1
                else:
                    seen.add(parsed.key)
                    traversals.append(parsed)
            else:
                errors.extend(parsed)

        if len(traversals) >= batch_size or len(errors) >= batch_size:
            if on_progress is not None:
                on_progress(total_rows)
            yield CsvBatch(traversals, errors, rows, duplicates)
            traversals, errors = [], []
            rows = duplicates = 0

    if rows:
        if on_progress is not None:
            on_progress(total_rows)
        yield CsvBatch(traversals, errors, rows, duplicates)


def _parse_row(
    fields: list[str], columns: _Columns, start: int, end: int
) -> Traversal | list[RowError]:
    """One data row to a traversal, or every problem found in it."""
    byte = _not_utf8(fields)
    if byte is not None:
        return [
            RowError(
                start,
                f"the row is not valid UTF-8 text (byte {byte}); save the export as UTF-8",
            )
        ]
    if len(fields) != columns.width:
        reason = (
            f"the row has {len(fields)} field(s) but the header has {columns.width}; "
            "check for a missing or extra comma"
        )
        if end > start:
            reason += f" or an unclosed quote (the row runs to line {end})"
        return [RowError(start, reason)]

    problems: list[str] = []

    ts = 0
    raw_ts = fields[columns.timestamp].strip()
    if not raw_ts:
        problems.append(
            f"timestamp is empty; expected ISO-8601 with a UTC offset, e.g. {_TIMESTAMP_EXAMPLE!r}"
        )
    else:
        try:
            ts = parse_iso(raw_ts)
        except InvalidTimestampError as exc:
            problems.append(f"timestamp {exc}")

    direction: Direction = 1
    raw_direction = fields[columns.direction].strip()
    if raw_direction in _POSITIVE:
        direction = 1
    elif raw_direction in _NEGATIVE:
        direction = -1
    elif not raw_direction:
        problems.append("direction is empty; expected 1 or -1")
    else:
        problems.append(f"direction {raw_direction!r} is not 1 or -1")

    dpu_id = fields[columns.dpu_id].strip()
    if not dpu_id:
        problems.append("dpu_id is empty; every row needs the id of the DPU that reported it")

    if problems:
        return [RowError(start, problem) for problem in problems]
    return Traversal(dpu_id=dpu_id, seq=imported_seq(ts, direction), ts=ts, direction=direction)
