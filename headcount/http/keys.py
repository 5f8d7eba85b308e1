"""Typed application state: every long-lived resource the handlers use."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from headcount.actors import ChangeFeed, LiveCounts, ResetTaker
from headcount.clock import Clock
from headcount.domain.shards import ShardStatus
from headcount.eventstore.store import EventStore
from headcount.history import History
from headcount.ingest.dpus import DpuRegistry
from headcount.ingest.health import IngestHealth
from headcount.metrics import Metrics

STORE = web.AppKey("store", EventStore)
HISTORY = web.AppKey("history", History)
#: The live state of the spaces: the local actors, through their narrow read interface.
ACTORS = web.AppKey[LiveCounts]("actors")
#: Where ``POST /spaces/{id}/resets`` hands a reset (the local actors); without it, 503.
RESETS = web.AppKey[ResetTaker]("resets")
DPUS = web.AppKey("dpus", DpuRegistry)
METRICS = web.AppKey("metrics", Metrics)
#: How ingest is doing, for ``/healthz`` (an API without it reports on the actors only).
INGEST = web.AppKey("ingest", IngestHealth)
#: The clock live answers are timed with (``headcount.clock.now_ms`` when not set).
CLOCK = web.AppKey[Clock]("clock")
#: Every change of a space's live state (the actors' feed), for the live push.
CHANGES = web.AppKey("changes", ChangeFeed)
#: What this process is to its shard (owner or standby), for ``/healthz``.
SHARD = web.AppKey[Callable[[], ShardStatus]]("shard")
