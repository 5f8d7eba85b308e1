"""The store's tables. Every table is append-only: rows are inserted, never updated or deleted.

Timestamps are BIGINT milliseconds since the epoch (UTC), the same integers the domain uses.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.schema import SchemaItem

# SQLite only aliases the rowid (and so auto-increments) for a column typed exactly INTEGER.
Position = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "pk": "pk_%(table_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    }
)

#: Every traversal a DPU reported, once. ``position`` is the order of arrival (the log
#: position); ``late`` says the event was stored with a ``ts`` at or before the newest snapshot
#: of the store at that moment, so it may make existing snapshots unusable (see
#: ``headcount.history``). It is decided when the row is inserted and never changes.
#:
#: On PostgreSQL the table is partitioned by month of ``ts`` (``eventstore/partitions.py``),
#: and a unique key there must hold the partition key: it is ``(dpu_id, seq, ts)``, and the
#: primary key ``(position, ts)``. Which reports are duplicates does not change: an exact
#: duplicate has the same ``ts``, and a ``(dpu_id, seq)`` already stored with another ``ts`` is
#: skipped by the trigger ``traversals_one_per_seq`` (its key is in :data:`traversal_keys`),
#: so the append reports it as a conflict as it does on SQLite, where ``(dpu_id, seq)`` stays
#: the unique key.
traversals = Table(
    "traversals",
    metadata,
    Column("position", Position, primary_key=True, autoincrement=True),
    Column("dpu_id", String(64), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("ts", BigInteger, nullable=False),
    Column("direction", SmallInteger, nullable=False),
    Column("received_at", BigInteger, nullable=False),
    Column("late", Boolean, nullable=False),
    UniqueConstraint("dpu_id", "seq").ddl_if(dialect="sqlite"),
    UniqueConstraint("dpu_id", "seq", "ts").ddl_if(dialect="postgresql"),
    CheckConstraint("direction IN (1, -1)", name="direction"),
    Index(None, "dpu_id", "ts"),
    postgresql_partition_by="RANGE (ts)",
)

#: The ``ON CONFLICT`` target of an append of traversals, by backend: the columns of the
#: unique key above. The one place it is said (``log.py`` and any raw insert read it).
TRAVERSAL_CONFLICT_TARGET: dict[str, tuple[str, ...]] = {
    "sqlite": ("dpu_id", "seq"),
    "postgresql": ("dpu_id", "seq", "ts"),
}


def traversal_conflict_target(dialect: str) -> tuple[str, ...]:
    """The columns of ``ON CONFLICT (...)`` for traversals on ``dialect``."""
    return TRAVERSAL_CONFLICT_TARGET[dialect]


#: PostgreSQL only: the key of every traversal ever stored, whatever month holds it (a
#: partitioned table has no index across its partitions). The trigger
#: ``traversals_one_per_seq`` inserts the key of each row before it is stored and skips the
#: row when the key was there: one narrow index decides duplicates, as ``UNIQUE(dpu_id, seq)``
#: did, and a month that is detached and archived keeps its keys (a redelivery of an archived
#: event stays a duplicate). Only ever inserted into.
traversal_keys = Table(
    "traversal_keys",
    metadata,
    Column("dpu_id", String(64), primary_key=True),
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    info={"dialects": ("postgresql",)},
)
#: The columns an append writes, in its order (its ``ON CONFLICT`` target is
#: ``traversal_conflict_target`` above).
TRAVERSAL_COLUMNS = ("dpu_id", "seq", "ts", "direction", "received_at", "late")
#: Queries must say exactly this for the planners to use the partial index (SQLite matches
#: the text: ``late = 1`` or ``late IS 1`` would scan every row of the DPU instead).
LATE = text("late = true")
Index(
    "ix_traversals_late",
    traversals.c.dpu_id,
    traversals.c.ts,
    sqlite_where=LATE,
    postgresql_where=LATE,
)

#: Counts set by hand (or by an operator's tool) at a moment. One per space and millisecond.
resets = Table(
    "resets",
    metadata,
    Column("id", Position, primary_key=True, autoincrement=True),
    Column("space_id", String(64), nullable=False),
    Column("ts", BigInteger, nullable=False),
    Column("count", Integer, nullable=False),
    Column("source", String(200), nullable=False),
    Column("recorded_at", BigInteger, nullable=False),
    UniqueConstraint("space_id", "ts"),
)

#: A space's folded state as of ``as_of`` (every event with ``ts <= as_of`` folded in), computed
#: from every traversal up to log ``position`` and every reset up to ``reset_id``, under the
#: topology whose fingerprint for that space is ``fingerprint``. Derived and disposable.
#: ``generation`` is the replay (``replays.id``) whose snapshots it belongs with, 0 before any:
#: a finished replay of the space supersedes older generations (see ``replayed_spaces``).
snapshots = Table(
    "snapshots",
    metadata,
    Column("id", Position, primary_key=True, autoincrement=True),
    Column("space_id", String(64), nullable=False),
    Column("fingerprint", String(64), nullable=False),
    Column("as_of", BigInteger, nullable=False),
    Column("count", BigInteger, nullable=False),
    Column("entrances", BigInteger, nullable=False),
    Column("exits", BigInteger, nullable=False),
    Column("position", BigInteger, nullable=False),
    Column("reset_id", BigInteger, nullable=False),
    Column("taken_at", BigInteger, nullable=False),
    Column("generation", BigInteger, nullable=False, server_default=text("0")),
    Index(None, "space_id", "fingerprint", "as_of"),
    Index(None, "as_of"),
)

#: What a space's events of ``[bucket_start, bucket_end)`` do to any count it starts with
#: (``domain.rollups``): one row per five-minute bucket with events, one per stretch without,
#: folded from every traversal up to log ``position`` and every reset up to ``reset_id`` under
#: the topology whose fingerprint for the space is ``fingerprint``. Derived and disposable,
#: used as snapshots are: a late traversal or a reset stored after it in its time makes it
#: unusable, and a finished replay of a later generation supersedes it.
rollups = Table(
    "rollups",
    metadata,
    Column("id", Position, primary_key=True, autoincrement=True),
    Column("space_id", String(64), nullable=False),
    Column("fingerprint", String(64), nullable=False),
    Column("bucket_start", BigInteger, nullable=False),
    Column("bucket_end", BigInteger, nullable=False),
    Column("position", BigInteger, nullable=False),
    Column("reset_id", BigInteger, nullable=False),
    Column("generation", BigInteger, nullable=False),
    Column("events", BigInteger, nullable=False),
    Column("entrances", BigInteger, nullable=False),
    Column("exits", BigInteger, nullable=False),
    Column("shift", BigInteger, nullable=False),
    Column("rise", BigInteger, nullable=False),
    Column("dip", BigInteger, nullable=False),
    Column("floor_end", BigInteger, nullable=False),
    Column("floor_high", BigInteger, nullable=False),
    Column("reset_end", BigInteger, nullable=True),
    Column("reset_low", BigInteger, nullable=True),
    Column("reset_high", BigInteger, nullable=True),
    Index(None, "space_id", "fingerprint", "bucket_start"),
)

#: Input that was refused, with the reason: nothing that arrives is silently dropped.
quarantine = Table(
    "quarantine",
    metadata,
    Column("id", Position, primary_key=True, autoincrement=True),
    Column("received_at", BigInteger, nullable=False),
    Column("origin", String(300), nullable=False),
    Column("reason", Text, nullable=False),
    Column("payload", LargeBinary, nullable=False),
)

#: Every topology the store was used with, in order: the newest is the current one. Kept so
#: that a command run without a topology file answers under the one the data was stored with.
topologies = Table(
    "topologies",
    metadata,
    Column("id", Position, primary_key=True, autoincrement=True),
    Column("digest", String(64), nullable=False),
    Column("document", Text, nullable=False),
    Column("origin", String(500), nullable=False),
    Column("recorded_at", BigInteger, nullable=False),
)

#: One row per run of ``headcount replay`` that writes snapshots; its id is their generation.
#: ``position`` and ``reset_id`` are the heads of the logs the replay folded.
replays = Table(
    "replays",
    metadata,
    Column("id", Position, primary_key=True, autoincrement=True),
    Column("started_at", BigInteger, nullable=False),
    Column("topology_digest", String(64), nullable=False),
    Column("from_ts", BigInteger, nullable=True),
    Column("position", BigInteger, nullable=False),
    Column("reset_id", BigInteger, nullable=False),
)

#: A space whose replay finished. From then on its snapshots of older generations with
#: ``as_of >= from_ts`` (every one, when ``from_ts`` is null) are superseded: never used again,
#: still stored.
replayed_spaces = Table(
    "replayed_spaces",
    metadata,
    Column("id", Position, primary_key=True, autoincrement=True),
    Column("replay_id", BigInteger, ForeignKey("replays.id"), nullable=False),
    Column("space_id", String(64), nullable=False),
    Column("from_ts", BigInteger, nullable=True),
    Column("events", BigInteger, nullable=False),
    Column("snapshots", BigInteger, nullable=False),
    Column("finished_at", BigInteger, nullable=False),
    UniqueConstraint("space_id", "replay_id"),
)


def on_backend(item: SchemaItem, dialect: str) -> bool:
    """Whether a table, constraint or index of :data:`metadata` exists on ``dialect``: some
    are PostgreSQL's only (:data:`traversal_keys`) or differ by backend (``ddl_if``). For
    comparing a migrated database with the metadata."""
    dialects = getattr(item, "info", {}).get("dialects")
    if dialects is not None and dialect not in dialects:
        return False
    condition = getattr(item, "_ddl_if", None)
    return condition is None or condition.dialect in (None, dialect)
