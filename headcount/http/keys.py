"""Typed application state: every long-lived resource the handlers use."""

from __future__ import annotations

from aiohttp import web

from headcount.actors import ActorSystem
from headcount.eventstore.store import EventStore
from headcount.history import History
from headcount.ingest.dpus import DpuRegistry
from headcount.metrics import Metrics

STORE = web.AppKey("store", EventStore)
HISTORY = web.AppKey("history", History)
ACTORS = web.AppKey("actors", ActorSystem)
DPUS = web.AppKey("dpus", DpuRegistry)
METRICS = web.AppKey("metrics", Metrics)
