"""The outputs as one part of the service: follow the actors' change feed, and hand each
space's new count to MQTT out and to the capacity alerts (MQTT and webhooks).

Counting never waits for any of it: the feed's subscription is a bounded queue the actors
fill without waiting, and everything done per change here is in memory. If this part ever
falls so far behind that the feed drops its subscription, it subscribes again and reads
every space's live count afresh (and says so in the log): MQTT then gets the current
states, and each count read goes through the alert rule, so a space that crossed its
threshold in the gap still gets its alert.
"""

from __future__ import annotations

import asyncio
import logging

from headcount.actors.changes import ChangeFeed, SubscriptionClosed
from headcount.actors.reading import LiveCounts, SpaceRecoveringError
from headcount.clock import Clock, now_ms
from headcount.metrics import Metrics
from headcount.outputs.alerts import AlertDetector
from headcount.outputs.mqtt import MqttOut
from headcount.outputs.webhooks import Webhooks

__all__ = ["Outputs"]

log = logging.getLogger(__name__)

#: Changes the subscription holds before the feed drops it.
SUBSCRIPTION_SIZE = 10_000


class Outputs:
    """MQTT out (``mqtt``, optional) and capacity alerts to MQTT and ``webhooks``."""

    def __init__(
        self,
        live: LiveCounts,
        feed: ChangeFeed,
        *,
        metrics: Metrics,
        mqtt: MqttOut | None = None,
        webhooks: Webhooks | None = None,
        clock: Clock = now_ms,
        subscription_size: int = SUBSCRIPTION_SIZE,
    ) -> None:
        self.live = live
        self.feed = feed
        self.mqtt = mqtt
        self.webhooks = webhooks
        self.alerts = AlertDetector(live.topology)
        self._metrics = metrics
        self._clock = clock
        self._subscription_size = subscription_size

    async def run(self) -> None:
        """Until cancelled (MQTT out then says ``offline``)."""
        async with asyncio.TaskGroup() as parts:
            if self.mqtt is not None:
                parts.create_task(self.mqtt.run(), name="mqtt-out")
            if self.webhooks is not None:
                parts.create_task(self.webhooks.run(), name="webhooks")
            parts.create_task(self._follow(), name="outputs-follow")

    async def _follow(self) -> None:
        first = True
        while True:
            # Subscribing and reading the counts in one step of the loop: no change between.
            subscription = self.feed.subscribe(maxsize=self._subscription_size)
            self._read_all(first=first)
            first = False
            try:
                async for change in subscription:
                    self.on_count(
                        change.space_id,
                        change.ts,
                        change.count,
                        entrances=change.entrances,
                        exits=change.exits,
                    )
            except SubscriptionClosed as e:
                log.warning("outputs fell behind the counts (%s); reading them all again", e)
            else:
                return  # closed on purpose
            finally:
                subscription.close()

    def _read_all(self, *, first: bool) -> None:
        """Every space's live count: at the start the alert states are taken from them
        without an alert; after a gap they go through the rule like any change."""
        for space_id in self.live.topology.spaces:
            try:
                state = self.live.live_state(space_id)
            except SpaceRecoveringError:
                continue  # its first change comes through the feed
            if state is None:
                continue  # served by another shard
            ts = self._clock() if state.as_of is None else state.as_of
            if first:
                self.alerts.start(space_id, state.count)
            self.on_count(space_id, ts, state.count, entrances=state.entrances, exits=state.exits)

    def on_count(
        self,
        space_id: str,
        ts: int,
        count: int,
        *,
        entrances: int | None = None,
        exits: int | None = None,
    ) -> None:
        """A space's new live count: to MQTT (throttled) and through the alert rule."""
        if self.mqtt is not None:
            self.mqtt.offer(space_id, ts, count, entrances=entrances, exits=exits)
        alert = self.alerts.observe(space_id, ts, count)
        if alert is None:
            return
        self._metrics.alerts.labels(space_id, str(alert.state)).inc()
        log.info(
            "capacity alert: space %r is %s (%d people, threshold %d of capacity %d)",
            space_id,
            alert.state,
            count,
            alert.threshold,
            alert.capacity,
        )
        if self.mqtt is not None:
            self.mqtt.alert(alert)
        if self.webhooks is not None:
            self.webhooks.notify(alert)
