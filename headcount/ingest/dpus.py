"""What the service knows of each DPU beyond the topology: online status, last report."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class DpuStatus:
    """``online`` is the DPU's last status message (``None``: never heard); ``last_seen`` when
    its last traversal message arrived (ms); ``last_seq`` the highest seq it reported."""

    dpu_id: str
    online: bool | None = None
    last_seen: int | None = None
    last_seq: int | None = None


class DpuRegistry:
    """Status of every DPU heard from, kept in memory (rebuilt from the broker's retained
    status messages and new traffic after a restart)."""

    def __init__(self) -> None:
        self._status: dict[str, DpuStatus] = {}

    def get(self, dpu_id: str) -> DpuStatus:
        return self._status.get(dpu_id) or DpuStatus(dpu_id)

    def set_online(self, dpu_id: str, online: bool) -> None:
        s = self.get(dpu_id)
        self._status[dpu_id] = DpuStatus(dpu_id, online, s.last_seen, s.last_seq)

    def seen(self, dpu_id: str, at: int, seq: int) -> None:
        s = self.get(dpu_id)
        last_seq = seq if s.last_seq is None else max(s.last_seq, seq)
        self._status[dpu_id] = DpuStatus(dpu_id, s.online, at, last_seq)

    def online_count(self) -> int:
        return sum(1 for s in self._status.values() if s.online)
