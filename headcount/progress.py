"""Progress for long work, on stderr: a line rewritten in place on a terminal, a line every few
seconds elsewhere (CI logs, pipes)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Reports ``done`` of ``total`` (when known) units of work with a rate."""

    def __init__(
        self,
        what: str,
        *,
        total: int | None = None,
        stream: TextIO | None = None,
        every_s: float = 2.0,
    ) -> None:
        self.what = what
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.started = time.monotonic()
        self._last = self.started
        self._every = 0.1 if self.stream.isatty() else every_s
        self._inline = self.stream.isatty()

    def update(self, done: int, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self._every:
            return
        self._last = now
        elapsed = max(now - self.started, 1e-9)
        share = f" of {self.total:,} ({done / self.total:.0%})" if self.total else ""
        line = f"{self.what}: {done:,}{share}, {done / elapsed:,.0f}/s"
        if self._inline:
            self.stream.write(f"\r{line}\x1b[K")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def finish(self, done: int) -> float:
        """Print the final figure; returns the seconds taken."""
        self.update(done, force=True)
        if self._inline:
            self.stream.write("\n")
        return time.monotonic() - self.started
