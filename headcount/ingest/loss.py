"""Loss the broker causes, detected: each DPU's delivery report set against the store.

A DPU's status map says how many distinct traversals the broker acknowledged to it with seq in
``[first, seq]`` (see :mod:`headcount.ingest.wire`). A broker that drops messages for a
subscriber that falls behind (a stock Mosquitto past ``max_queued_messages``) acknowledged them
all the same, so only this comparison shows the loss. The figure, ``sent - stored``, goes to
``/dpus/{id}``, to the gauge ``headcount_dpu_missing_events{dpu_id}`` and, each time it grows,
to one warning in the log.

Cost: reports are compared in the commit loop, after the traversals delivered before them are
committed. For a DPU already followed, one indexed count over the seqs it reported since its
last report; for a new count (a restart of the service, a DPU that restarted its count), one
over ``[first, seq]``. On the ingest path, one dictionary lookup per stored traversal, to count
the late ones (seq at or below the last report) as they arrive. Nothing is kept that a restart
could get wrong: the first report after it (the retained status) is counted from the store.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from headcount.clock import now_ms
from headcount.domain.events import Traversal
from headcount.errors import StoreError
from headcount.eventstore.log import EventLog
from headcount.ingest.dpus import Delivery, DpuRegistry
from headcount.ingest.wire import Report
from headcount.metrics import Metrics

__all__ = ["LossAudit"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Window:
    """What is known of a DPU's count: it started at seq ``first``; ``stored`` traversals with
    seq in ``[first, seq]`` are in the store."""

    first: int
    seq: int
    stored: int


class LossAudit:
    """Compares DPUs' delivery reports with what ingest stored. ``stored`` follows every
    commit, ``reported`` takes a report once what was delivered before it is committed."""

    def __init__(
        self,
        log: EventLog,
        dpus: DpuRegistry,
        metrics: Metrics,
        *,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self._log = log
        self._dpus = dpus
        self._metrics = metrics
        self._clock = clock
        self._windows: dict[str, _Window] = {}
        self._missing: dict[str, int] = {}  # the figure last published, per DPU

    def stored(self, traversals: Iterable[Traversal]) -> None:
        """``traversals`` were stored now (each for the first time). Those at or below a DPU's
        last report arrived late: they reduce its figure at once."""
        late: set[str] = set()
        for t in traversals:
            window = self._windows.get(t.dpu_id)
            if window is not None and window.first <= t.seq <= window.seq:
                window.stored += 1
                late.add(t.dpu_id)
        for dpu_id in late:
            delivery = self._dpus.get(dpu_id).delivery
            if delivery is not None:
                self._publish(dpu_id, self._windows[dpu_id], delivery.sent)

    def forget(self, dpu_ids: Iterable[str]) -> None:
        """What was stored for ``dpu_ids`` is uncertain (a commit whose outcome was lost): their
        next report is counted from the store."""
        for dpu_id in dpu_ids:
            self._windows.pop(dpu_id, None)

    async def reported(self, dpu_id: str, report: Report) -> None:
        """Compare ``report`` with the store and publish the figure. A store that cannot be read
        now leaves the last figure as it was (the DPU reports again)."""
        if report.first is None or report.seq is None:
            self._windows.pop(dpu_id, None)
            self._publish(dpu_id, None, report.sent)
            return
        window = self._windows.get(dpu_id)
        try:
            if window is not None and window.first == report.first and window.seq <= report.seq:
                if report.seq > window.seq:
                    window.stored += await self._log.count_seqs(dpu_id, window.seq + 1, report.seq)
                    window.seq = report.seq
            else:
                stored = await self._log.count_seqs(dpu_id, report.first, report.seq)
                window = _Window(report.first, report.seq, stored)
                self._windows[dpu_id] = window
        except StoreError as e:
            self._windows.pop(dpu_id, None)
            log.info(
                "DPU %r's delivery report not compared, the store is unavailable: %s", dpu_id, e
            )
            return
        self._publish(dpu_id, window, report.sent)

    def _publish(self, dpu_id: str, window: _Window | None, sent: int) -> None:
        delivery = Delivery(
            first=None if window is None else window.first,
            seq=None if window is None else window.seq,
            sent=sent,
            stored=0 if window is None else window.stored,
            reported_at=self._clock(),
        )
        self._dpus.set_delivery(dpu_id, delivery)
        self._metrics.dpu_missing.labels(dpu_id).set(delivery.missing)
        before = self._missing.get(dpu_id, 0)
        self._missing[dpu_id] = delivery.missing
        if delivery.missing > before:
            log.warning(
                "DPU %r reports %d traversals with seq %s to %s acknowledged by the broker;"
                " %d of them are not stored (%d more than before): the broker dropped them or"
                " they were refused into quarantine. Check the broker's queue limits"
                " (max_queued_messages, max_inflight_messages: see broker_config/mosquitto.conf)"
                " and the quarantine",
                dpu_id,
                delivery.sent,
                delivery.first,
                delivery.seq,
                delivery.missing,
                delivery.missing - before,
            )
