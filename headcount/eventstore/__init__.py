"""The append-only event store (SQLite by default, PostgreSQL by URL): the log, snapshots,
replay generations, topology documents and quarantine, each in a module of its own; see
``eventstore.store``. Driver errors become ``headcount.errors.StoreError`` in ``engine``."""

from headcount.eventstore.engine import DEFAULT_URL
from headcount.eventstore.lease import lease
from headcount.eventstore.records import (
    AppendResult,
    Conflict,
    Head,
    LateMark,
    QuarantineEntry,
    ReplayedSpace,
    Snapshot,
    StoredReset,
)
from headcount.eventstore.store import EventStore

__all__ = [
    "DEFAULT_URL",
    "AppendResult",
    "Conflict",
    "EventStore",
    "Head",
    "LateMark",
    "QuarantineEntry",
    "ReplayedSpace",
    "Snapshot",
    "StoredReset",
    "lease",
]
