"""The service's Prometheus metrics, in a registry of its own (no process-global state: two
services in one process, as in tests, count separately)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector


class Metrics:
    """Counters the ingest path, the actors and the API update."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.messages = Counter(
            "headcount_mqtt_messages", "MQTT messages received on traversal topics", registry=r
        )
        self.events = Counter(
            "headcount_events_ingested", "Traversals stored for the first time", registry=r
        )
        self.duplicates = Counter(
            "headcount_duplicates_dropped", "Traversals already stored (redeliveries)", registry=r
        )
        self.quarantined = Counter(
            "headcount_quarantined",
            "Payloads or events refused and kept in quarantine, by reason",
            ["reason"],
            registry=r,
        )
        self.rate_limited = Counter(
            "headcount_rate_limited",
            "Messages refused because their DPU exceeded its rate limit, by DPU (DPUs the"
            ' topology does not know share dpu="unknown")',
            ["dpu"],
            registry=r,
        )
        self.quarantine_suppressed = Counter(
            "headcount_quarantine_suppressed",
            "Refused input not written to quarantine because its DPU and reason had used their"
            " quarantine budget for the time window, by reason",
            ["reason"],
            registry=r,
        )
        self.status = Counter(
            "headcount_status_messages",
            "DPU status messages received, by outcome: applied, or from a DPU no topology"
            " knows (not marked online); refused ones are in headcount_quarantined",
            ["outcome"],
            registry=r,
        )
        self.dropped = Counter(
            "headcount_ingest_dropped",
            "Messages acknowledged but neither stored nor quarantined: the store refused even"
            " a minimal quarantine entry for them (each is logged), by reason",
            ["reason"],
            registry=r,
        )
        self.late = Counter(
            "headcount_late_events",
            "Events folded out of order by a space actor (before its newest event)",
            registry=r,
        )
        self.commit_seconds = Histogram(
            "headcount_batch_commit_seconds",
            "Time to commit one ingest batch to the store",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        self.batch_events = Histogram(
            "headcount_batch_events",
            "Traversals per committed ingest batch",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000),
            registry=r,
        )
        self.mailbox_depth = Gauge(
            "headcount_mailbox_depth", "Events waiting in space actors' mailboxes", registry=r
        )
        self.dpus_online = Gauge(
            "headcount_dpus_online", "DPUs whose last status was online", registry=r
        )

        self.dpu_missing = Gauge(
            "headcount_dpu_missing_events",
            "Traversals a DPU's last delivery report says the broker acknowledged that are not"
            " stored (lost on the way, or refused into quarantine), by DPU",
            ["dpu_id"],
            registry=r,
        )

        self.alerts = Counter(
            "headcount_alerts",
            "Capacity alerts raised, by space and state (over, clear)",
            ["space", "state"],
            registry=r,
        )
        self.webhook_deliveries = Counter(
            "headcount_webhook_deliveries",
            "Alerts a webhook's receiver accepted (a 2xx answer), by webhook",
            ["webhook"],
            registry=r,
        )
        self.webhook_failures = Counter(
            "headcount_webhook_failures",
            "Webhook attempts that failed (no connection, a timeout, an answer other than"
            " 2xx), each retry counted, by webhook",
            ["webhook"],
            registry=r,
        )
        self.webhook_dropped = Counter(
            "headcount_webhook_dropped",
            "Alerts a webhook never got, by webhook and reason: queue_full (the oldest waiting"
            " one made room) or attempts (every attempt failed)",
            ["webhook", "reason"],
            registry=r,
        )

        # Sensor health (headcount.history.dpu_health): last heard is read from the DPU
        # registry when scraped; the others are refreshed by a background pass over the DPUs.
        self.dpu_last_heard = LabelledReadout(
            "headcount_dpu_last_heard_timestamp_seconds",
            "When the service last received a traversal message from the DPU (Unix time), by"
            " DPU of the topology",
            "dpu",
        )
        r.register(self.dpu_last_heard)
        self.dpu_sequence_gaps = Gauge(
            "headcount_dpu_sequence_gaps",
            "Jumps in seq between consecutive stored traversals of the DPU over the last 7"
            " days (lost reports), by DPU",
            ["dpu"],
            registry=r,
        )
        self.dpu_quiet = Gauge(
            "headcount_dpu_quiet",
            "1 when the DPU's doorway has been silent far longer than its usual traffic at"
            " this hour of the week makes likely (P < 0.001), else 0, by DPU",
            ["dpu"],
            registry=r,
        )
        self.dpu_imbalance_ratio = Gauge(
            "headcount_dpu_imbalance_ratio",
            "Traversals the DPU counted in its busier direction over those in the other, over"
            " the last 7 days (1 balanced, +Inf one way only, NaN none), by DPU",
            ["dpu"],
            registry=r,
        )

    def watch(self, gauge: Gauge, read: Callable[[], float]) -> None:
        """Let ``gauge`` read its value when scraped."""
        gauge.set_function(read)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


class LabelledReadout(Collector):
    """A labelled gauge whose values are read when scraped (``read`` yields ``(label value,
    value)`` pairs): for figures kept elsewhere in memory, never copied into the metric."""

    def __init__(self, name: str, documentation: str, label: str) -> None:
        self._name = name
        self._documentation = documentation
        self._label = label
        self._read: Callable[[], Iterable[tuple[str, float]]] = tuple

    def set_function(self, read: Callable[[], Iterable[tuple[str, float]]]) -> None:
        self._read = read

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return [GaugeMetricFamily(self._name, self._documentation, labels=[self._label])]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(self._name, self._documentation, labels=[self._label])
        for label_value, reading in self._read():
            family.add_metric([label_value], reading)
        yield family
