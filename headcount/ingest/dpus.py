"""What the service knows of each DPU beyond the topology: online status, last report, and
how its delivery report compares with the store."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class Delivery:
    """A DPU's last delivery report set against the store: it says the broker acknowledged
    ``sent`` distinct traversals with seq in ``[first, seq]``; ``stored`` of them are in the
    store. ``reported_at``: when the report was compared (ms)."""

    first: int | None
    seq: int | None
    sent: int
    stored: int
    reported_at: int

    @property
    def missing(self) -> int:
        """Traversals the DPU sent that are not stored: lost on the way or refused. Never
        negative (events stored by other means, an import say, do not make up for loss)."""
        return max(0, self.sent - self.stored)


@dataclass(frozen=True, slots=True)
class DpuStatus:
    """``online`` is the DPU's last status message (``None``: never heard); ``last_seen`` when
    its last traversal message arrived (ms); ``last_seq`` the highest seq it reported;
    ``delivery`` its last delivery report against the store (``None``: none yet, or old
    firmware that sends none)."""

    dpu_id: str
    online: bool | None = None
    last_seen: int | None = None
    last_seq: int | None = None
    delivery: Delivery | None = None


class DpuRegistry:
    """Status of every DPU heard from, kept in memory (rebuilt from the broker's retained
    status messages and new traffic after a restart)."""

    def __init__(self) -> None:
        self._status: dict[str, DpuStatus] = {}

    def get(self, dpu_id: str) -> DpuStatus:
        return self._status.get(dpu_id) or DpuStatus(dpu_id)

    def set_online(self, dpu_id: str, online: bool) -> None:
        self._status[dpu_id] = replace(self.get(dpu_id), online=online)

    def seen(self, dpu_id: str, at: int, seq: int) -> None:
        # Once per message: built directly (dataclasses.replace costs twice as much).
        s = self.get(dpu_id)
        last_seq = seq if s.last_seq is None or seq > s.last_seq else s.last_seq
        self._status[dpu_id] = DpuStatus(dpu_id, s.online, at, last_seq, s.delivery)

    def set_delivery(self, dpu_id: str, delivery: Delivery) -> None:
        self._status[dpu_id] = replace(self.get(dpu_id), delivery=delivery)

    def statuses(self) -> Iterable[DpuStatus]:
        """Every DPU heard from, in no particular order."""
        return self._status.values()

    def online_count(self) -> int:
        return sum(1 for s in self._status.values() if s.online)
