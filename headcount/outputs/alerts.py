"""Capacity alerts: when a space fills up to its alert level, and when it empties below it
again with hysteresis. Pure: the caller gives each new count, the detector says what to tell.

The rule, for a space with a ``capacity`` above 0:

- the **threshold** is ``capacity``, or ``ceil(alert_at * capacity)`` (at least 1) when the
  topology sets ``alert_at``;
- the space goes **over** when its count reaches the threshold (``count >= threshold``);
- it is **clear** again once the count is at or below ``threshold - margin``, where
  ``margin = max(1, floor(5 % of capacity))``: a count going up and down by one person at
  the threshold gives one alert, not one per person.

At the start, each space takes the state its count is in without an alert: a restart does not
repeat the last alert, and a space over its threshold then clears as usual.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from enum import StrEnum

from headcount.domain.timefmt import format_ms
from headcount.domain.topology import Space, Topology

__all__ = ["Alert", "AlertDetector", "AlertRule", "AlertState"]

#: The hysteresis margin as a share of capacity (at least one person).
MARGIN_SHARE = 0.05


class AlertState(StrEnum):
    OVER = "over"
    CLEAR = "clear"


@dataclass(frozen=True, slots=True)
class AlertRule:
    """A space's alert levels: over at ``count >= threshold``, clear at ``count <= clear_at``."""

    capacity: int
    threshold: int
    clear_at: int

    @classmethod
    def for_space(cls, space: Space) -> AlertRule | None:
        """The space's rule; ``None`` without a capacity above 0 (nothing to alert on)."""
        capacity = space.capacity
        if not capacity:
            return None
        if space.alert_at is None:
            threshold = capacity
        else:
            threshold = max(1, math.ceil(space.alert_at * capacity))
        margin = max(1, math.floor(MARGIN_SHARE * capacity))
        return cls(capacity, threshold, threshold - margin)


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert: ``space_id`` went ``state`` at ``ts`` (ms) with ``count`` people."""

    space_id: str
    ts: int
    state: AlertState
    count: int
    capacity: int
    threshold: int

    def payload(self) -> bytes:
        """The alert as JSON, as published and POSTed: ``ts`` ISO-8601 UTC."""
        body = {
            "space_id": self.space_id,
            "ts": format_ms(self.ts),
            "state": str(self.state),
            "count": self.count,
            "capacity": self.capacity,
            "threshold": self.threshold,
        }
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


class AlertDetector:
    """Each space's alert state, moved by its counts."""

    def __init__(self, topology: Topology) -> None:
        self.rules: dict[str, AlertRule] = {}
        for space_id, space in topology.spaces.items():
            rule = AlertRule.for_space(space)
            if rule is not None:
                self.rules[space_id] = rule
        self._state: dict[str, AlertState] = {}

    def start(self, space_id: str, count: int) -> None:
        """Take the state ``count`` is in, without an alert (at start, or after a gap in the
        changes when the counts were read again)."""
        rule = self.rules.get(space_id)
        if rule is not None:
            over = count >= rule.threshold
            self._state[space_id] = AlertState.OVER if over else AlertState.CLEAR

    def observe(self, space_id: str, ts: int, count: int) -> Alert | None:
        """The alert the space's new ``count`` (at ``ts``) makes, if any."""
        rule = self.rules.get(space_id)
        if rule is None:
            return None
        state = self._state.get(space_id, AlertState.CLEAR)
        if state is AlertState.CLEAR and count >= rule.threshold:
            new = AlertState.OVER
        elif state is AlertState.OVER and count <= rule.clear_at:
            new = AlertState.CLEAR
        else:
            self._state[space_id] = state
            return None
        self._state[space_id] = new
        return Alert(space_id, ts, new, count, rule.capacity, rule.threshold)
