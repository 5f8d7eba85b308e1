"""Ground truth: how many people really were in each space, at every moment of a simulation.

The truth is kept in true time (the simulator's clock), whatever the DPUs' clocks said. The file
written by ``headcount simulate --truth FILE`` is CSV with the header ``ts,space_id,count``:
``ts`` is ISO-8601 UTC with milliseconds and ``Z``, the form the HTTP API answers with. It holds
one row per space at the simulated start (count 0: nobody is inside before the simulation), then
one row for every change, in time order. Several rows of one space may share a ``ts`` (two
people passing in the same millisecond); the last one is the count after that millisecond.
"""

from __future__ import annotations

import csv
from bisect import bisect_right
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TextIO

from headcount.domain.timefmt import format_ms, parse_iso
from headcount.errors import InvalidTimestampError, UnknownSpaceError
from headcount.sim.errors import TruthFileError

HEADER = ("ts", "space_id", "count")


class Truth:
    """The true count of each space over time, as a step function of ``ts`` (ms, UTC).

    ``changes`` maps each space to its ``(ts, count)`` rows in time order, the first at
    ``start`` with count 0.
    """

    def __init__(self, start: int, changes: Mapping[str, Iterable[tuple[int, int]]]) -> None:
        self.start = start
        self._times: dict[str, list[int]] = {}
        self._counts: dict[str, list[int]] = {}
        for space_id, rows in changes.items():
            times: list[int] = []
            counts: list[int] = []
            self._times[space_id], self._counts[space_id] = times, counts
            for ts, count in rows:
                if times and ts < times[-1]:
                    raise ValueError(f"truth rows of space {space_id!r} go back in time at {ts}")
                times.append(ts)
                counts.append(count)

    @property
    def spaces(self) -> tuple[str, ...]:
        """Every space the truth covers, in the order it was given."""
        return tuple(self._times)

    def count(self, space_id: str, ts: int) -> int:
        """How many people were in ``space_id`` at ``ts`` (after every change at ``ts``)."""
        try:
            times = self._times[space_id]
        except KeyError:
            raise UnknownSpaceError(space_id) from None
        i = bisect_right(times, ts) - 1
        return 0 if i < 0 else self._counts[space_id][i]

    def changes(self, space_id: str) -> list[tuple[int, int]]:
        """The ``(ts, count)`` rows of ``space_id``, in time order."""
        try:
            return list(zip(self._times[space_id], self._counts[space_id], strict=True))
        except KeyError:
            raise UnknownSpaceError(space_id) from None

    def final(self, space_id: str) -> int:
        """The count after the last change: who was still inside when the simulation ended."""
        rows = self.changes(space_id)
        return rows[-1][1] if rows else 0

    def write(self, stream: TextIO) -> None:
        """Write the truth file (see the module docstring), rows in time order."""
        # Sorted by time, then by the spaces' order; a space's own rows keep their order.
        rows = sorted(
            (ts, order, index, space_id, count)
            for order, space_id in enumerate(self._times)
            for index, (ts, count) in enumerate(self.changes(space_id))
        )
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(HEADER)
        writer.writerows((format_ms(ts), space_id, count) for ts, _, _, space_id, count in rows)

    def save(self, path: Path) -> None:
        """:meth:`write` to ``path``."""
        with path.open("w", encoding="utf-8", newline="") as stream:
            self.write(stream)

    @classmethod
    def load(cls, path: str | Path) -> Truth:
        """Read a truth file written by :meth:`write` (``headcount simulate --truth``)."""
        try:
            with Path(path).open(encoding="utf-8", newline="") as stream:
                return cls.read(stream, source=str(path))
        except OSError as e:
            raise TruthFileError(f"cannot read truth file {path}: {e.strerror}") from e

    @classmethod
    def read(cls, stream: TextIO, *, source: str = "<truth>") -> Truth:
        """Read truth rows from ``stream``; :class:`TruthFileError` names a bad line."""
        reader = csv.reader(stream)
        header = next(reader, None)
        if header is None or tuple(header) != HEADER:
            raise TruthFileError(
                f"{source}: the first line must be {','.join(HEADER)!r}; is this a file written"
                " by headcount simulate --truth?"
            )
        changes: dict[str, list[tuple[int, int]]] = {}
        start: int | None = None
        for row in reader:
            where = f"{source}:{reader.line_num}"
            if len(row) != len(HEADER):
                raise TruthFileError(f"{where}: expected 3 fields (ts,space_id,count)")
            text, space_id, count = row
            try:
                ts = parse_iso(text)
                rows = changes.setdefault(space_id, [])
                if rows and ts < rows[-1][0]:
                    raise TruthFileError(f"{where}: rows of space {space_id!r} go back in time")
                rows.append((ts, int(count)))
            except InvalidTimestampError as e:
                raise TruthFileError(f"{where}: {e}") from None
            except ValueError:
                raise TruthFileError(f"{where}: count {count!r} is not an integer") from None
            start = ts if start is None else min(start, ts)
        if start is None:
            raise TruthFileError(f"{source}: no rows after the header")
        return cls(start, changes)
