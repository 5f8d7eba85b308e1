"""CPU time of processes from /proc, for the benchmarks that charge each part of a deployment
(broker, headcount, PostgreSQL) its cost per event."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` (its own, not its children's); ``None`` once it
    has gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) * TICK_S  # utime, stime (fields 14 and 15)


def children(parent: int) -> list[int]:
    """The processes whose parent is ``parent`` (PostgreSQL's backends and workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat[stat.rindex(")") + 2 :].split()[1]) == parent:
            found.append(int(entry.name))
    return found


class CpuMeter:
    """The CPU seconds a set of processes spent between :meth:`start` and :meth:`stop`. The set
    is asked anew at each end (``pids``), so processes born meanwhile count in full; one gone
    before the end loses what it spent (rare: backends live as long as their pool)."""

    def __init__(self, pids: Iterable[int] | None = None) -> None:
        self._fixed = None if pids is None else list(pids)
        self._before: dict[int, float] = {}
        self.seconds = 0.0

    def pids(self) -> list[int]:
        assert self._fixed is not None
        return self._fixed

    def _read(self) -> dict[int, float]:
        return {pid: s for pid in self.pids() if (s := cpu_s(pid)) is not None}

    def start(self) -> None:
        self._before = self._read()

    def stop(self) -> float:
        after = self._read()
        self.seconds = sum(s - self._before.get(pid, 0.0) for pid, s in after.items())
        return self.seconds


class ChildrenMeter(CpuMeter):
    """A parent (PostgreSQL's postmaster) and every child of it."""

    def __init__(self, parent: int) -> None:
        super().__init__()
        self.parent = parent

    def pids(self) -> list[int]:
        return [self.parent, *children(self.parent)]
