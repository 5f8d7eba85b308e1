"""How ingest is doing, for ``/healthz``: messages waiting, the last commit, a stall and why."""

from __future__ import annotations

import time
from collections.abc import Callable

from headcount.clock import now_ms
from headcount.errors import StoreError, StoreWritesRefusedError

__all__ = ["IngestHealth"]


class IngestHealth:
    """How ingest is doing, read-only, for ``/healthz``: the :class:`Ingest` that made it
    keeps it up to date.

    ``waiting``: messages received and not yet acknowledged. ``last_commit``: when a batch was
    last committed (ms since the epoch; ``None``: not yet). ``stalled_since``: since when
    messages have been waiting without a commit (``None`` when nothing waits). ``last_error``:
    the store error that holds the batch now, if any.

    A store that refuses writes (disk full, read-only) is a problem at once, without waiting
    ``stall_after_s``: no commit can come before a person acts.
    """

    def __init__(
        self,
        stall_after_s: float,
        *,
        clock: Callable[[], int] = now_ms,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stall_after_s = stall_after_s
        self._clock = clock
        self._monotonic = monotonic
        self._waiting = 0
        self._last_commit: int | None = None
        self._since: tuple[float, int] | None = None  # (monotonic, ms) of the wait's start
        self._last_error: str | None = None
        self._refused: str | None = None  # the store's refusal of writes, while it lasts

    @property
    def waiting(self) -> int:
        return self._waiting

    @property
    def last_commit(self) -> int | None:
        return self._last_commit

    @property
    def stalled_since(self) -> int | None:
        return None if self._since is None else self._since[1]

    @property
    def last_error(self) -> str | None:
        return self._last_error

    def stalled_for(self) -> float:
        """Seconds messages have been waiting without a commit (0 when nothing waits)."""
        return 0.0 if self._since is None else self._monotonic() - self._since[0]

    def problem(self) -> str | None:
        """Why ingest is unhealthy, as a sentence; ``None`` while it keeps up."""
        waited = self.stalled_for()
        if self._since is not None and self._refused is not None:
            return (
                f"{self._refused}; {self._waiting} message(s) wait, none acknowledged"
                f" (the broker keeps them), for {waited:.0f} s"
            )
        if self._since is None or waited < self.stall_after_s:
            return None
        why = f"; the store answers: {self._last_error}" if self._last_error else ""
        return (
            f"ingest is stalled: {self._waiting} message(s) have waited {waited:.0f} s"
            f" without a commit (the limit is {self.stall_after_s:g} s){why}"
        )

    # -- kept up to date by the Ingest that made it --------------------------------------

    def received(self) -> None:
        if self._waiting == 0:
            self._since = (self._monotonic(), self._clock())
        self._waiting += 1

    def committed(self) -> None:
        self._last_commit = self._clock()
        self._last_error = None
        self._refused = None
        if self._waiting:
            self._since = (self._monotonic(), self._last_commit)

    def failed(self, error: StoreError) -> None:
        self._last_error = str(error)
        self._refused = str(error) if isinstance(error, StoreWritesRefusedError) else None

    def acknowledged(self, n: int) -> None:
        self._waiting -= n
        if self._waiting == 0:
            self._since = None
