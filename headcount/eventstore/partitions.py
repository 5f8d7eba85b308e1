"""The traversal log at scale: PostgreSQL's monthly partitions of ``traversals``.

On PostgreSQL ``traversals`` is partitioned by range of ``ts``, one partition per calendar
month (UTC), named ``traversals_yYYYYmMM``, and a DEFAULT partition that holds every row no
month was made for (an import of years-old data, a month nobody made ahead). Indexes are per
partition, so each stays the size of its month; a query bounded in ``ts`` reads only the
months it spans. SQLite stores are not partitioned: every function here is a no-op there.

- :func:`create` makes months (moving any rows the DEFAULT partition holds for them);
  :class:`PartitionUpkeep` keeps the current month and the next ones made, for the service.
- :func:`close_before` makes the store refuse every traversal and reset before a month
  (:func:`archived_before`): one stored there would make the snapshots after it unusable,
  and answers after it would then be folded from a log that lacks the detached months. Then
  :func:`detach_before` detaches the months before it from the log, to be archived
  (``pg_dump -t``) and dropped by the operator. Writing the snapshots that answer for the
  boundary, in between, is the caller's job (``headcount partitions detach`` does it).

Schema changes to these tables go through a migration (``migrations/``), never through here.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from headcount.clock import Clock, now_ms
from headcount.errors import HeadcountError, StoreError
from headcount.eventstore.engine import read_transaction, write_transaction

__all__ = [
    "DEFAULT",
    "MONTHS_HELD",
    "Month",
    "Partition",
    "PartitionUpkeep",
    "archived_before",
    "close_before",
    "create",
    "default_months",
    "detach_before",
    "ensure_ahead",
    "is_partitioned",
    "list_partitions",
]

log = logging.getLogger(__name__)

#: The partition of every row no month was made for.
DEFAULT = "traversals_default"
#: Months are made for times from the epoch to the end of year 9999; later ones (the wire
#: allows ``ts`` up to 2**53) stay in the DEFAULT partition.
_LAST_MS = 253_402_300_800_000
#: The (year, month) of every row of ``{table}`` within the months partitions are made for.
MONTHS_HELD = (
    "SELECT DISTINCT CAST(extract(year FROM m) AS int), CAST(extract(month FROM m) AS int)"
    " FROM (SELECT to_timestamp(ts / 1000) AT TIME ZONE 'UTC' AS m FROM {table}"
    f" WHERE ts >= 0 AND ts < {_LAST_MS}) AS held ORDER BY 1, 2"
)
#: How long making or detaching a partition waits for the log's lock.
_LOCK_WAIT = "10s"
_NAME = re.compile(r"^traversals_y(\d{4})m(\d{2})$")


class ArchivedError(HeadcountError):
    """A month asked for lies before the archive boundary, or a detach would lose rows."""


@dataclass(frozen=True, slots=True, order=True)
class Month:
    """A calendar month in UTC: the span ``[start, end)`` in ms of one partition."""

    year: int
    month: int

    def __post_init__(self) -> None:
        if not (1970 <= self.year <= 9999 and 1 <= self.month <= 12):
            raise ValueError(f"no partition month {self.year:04d}-{self.month:02d}")

    @classmethod
    def parse(cls, text_: str) -> Month:
        """``YYYY-MM`` (UTC), e.g. ``2026-11``."""
        found = re.fullmatch(r"(\d{4})-(\d{2})", text_.strip())
        if found is None:
            raise ValueError(f"{text_!r} is not a month: write YYYY-MM, e.g. 2026-11")
        return cls(int(found[1]), int(found[2]))

    @classmethod
    def of(cls, ts: int) -> Month:
        """The month holding the time ``ts`` (ms)."""
        moment = datetime.fromtimestamp(ts / 1000, UTC)
        return cls(moment.year, moment.month)

    @property
    def start(self) -> int:
        return int(datetime(self.year, self.month, 1, tzinfo=UTC).timestamp()) * 1000

    @property
    def end(self) -> int:
        return self.next().start if self.year < 9999 or self.month < 12 else _LAST_MS

    @property
    def table(self) -> str:
        return f"traversals_y{self.year:04d}m{self.month:02d}"

    def next(self) -> Month:
        return Month(self.year + self.month // 12, self.month % 12 + 1)

    def __str__(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"


@dataclass(frozen=True, slots=True)
class Partition:
    """A month's table (``month`` ``None``: the DEFAULT partition): ``attached`` to the log or
    detached (archived), its rows (PostgreSQL's estimate, exact after ``ANALYZE``) and size."""

    table: str
    month: Month | None
    attached: bool
    rows: int
    bytes: int


async def is_partitioned(engine: AsyncEngine) -> bool:
    """Whether the store's traversals are partitioned (PostgreSQL, schema 0003 on)."""
    if engine.dialect.name != "postgresql":
        return False
    async with read_transaction(engine) as conn:
        kind = await conn.scalar(
            text("SELECT CAST(relkind AS text) FROM pg_class WHERE oid = to_regclass('traversals')")
        )
    return bool(kind == "p")


async def list_partitions(engine: AsyncEngine) -> list[Partition]:
    """The log's partitions and the detached months still in the database, by month."""
    if not await is_partitioned(engine):
        return []
    async with read_transaction(engine) as conn:
        rows = await conn.execute(
            text(
                "SELECT c.relname, c.relispartition, GREATEST(c.reltuples, 0),"
                " pg_total_relation_size(c.oid) FROM pg_class c"
                " JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = current_schema() AND c.relkind = 'r'"
                " AND (c.relname = :default OR c.relname ~ '^traversals_y[0-9]{4}m[0-9]{2}$')"
            ),
            {"default": DEFAULT},
        )
        found = [
            Partition(name, _month_of(name), bool(attached), int(tuples), int(size))
            for name, attached, tuples, size in rows
        ]
    return sorted(found, key=lambda p: (p.month is None, p.month or Month(1970, 1)))


async def archived_before(engine: AsyncEngine) -> int | None:
    """The time (ms) before which the log was detached, refusing new events; ``None``."""
    if not await is_partitioned(engine):
        return None
    async with read_transaction(engine) as conn:
        found = await conn.scalar(text("SELECT headcount_archived_before()"))
    return None if found is None else int(found)


async def create(engine: AsyncEngine, months: Iterable[Month]) -> list[Month]:
    """Make a partition for each month that has none; returns those made. Rows the DEFAULT
    partition holds for such a month move into it (same positions). A month before the
    archive boundary is refused: it would take events the store must refuse."""
    wanted = sorted(set(months))
    if not wanted or not await is_partitioned(engine):
        return []
    boundary = await archived_before(engine)
    early = [m for m in wanted if boundary is not None and m.start < boundary]
    if early:
        raise ArchivedError(
            f"month {early[0]} lies before {_iso(boundary or 0)}, where the log was archived"
            " ('headcount partitions detach'): no month before it can be made again"
        )
    made: list[Month] = []
    async with write_transaction(engine, exclusive=True) as conn:
        await _wait_briefly(conn)
        existing = set(await _attached_months(conn))
        for month in wanted:
            if month not in existing:
                await _create_month(conn, month)
                made.append(month)
    for month in made:
        log.info("partition %s made for %s", month.table, month)
    return made


async def ensure_ahead(engine: AsyncEngine, *, now: int, ahead: int = 2) -> list[Month]:
    """Make the month of ``now`` and the ``ahead`` months after it, where missing."""
    month = Month.of(now)
    months = [month]
    for _ in range(ahead):
        month = month.next()
        months.append(month)
    return await create(engine, months)


async def default_months(engine: AsyncEngine) -> list[Month]:
    """The months the DEFAULT partition holds rows of (rows for which no month was made)."""
    if not await is_partitioned(engine):
        return []
    async with read_transaction(engine) as conn:
        rows = await conn.execute(text(MONTHS_HELD.format(table=DEFAULT)))
        return [Month(int(y), int(m)) for y, m in rows]


async def close_before(engine: AsyncEngine, month: Month) -> int:
    """Refuse, from now on, every traversal and reset with a time before ``month``: the first
    step of detaching the months before it (new events there would make the snapshots that
    answer for them unusable). Returns the boundary (ms), never moved back. Refused when the
    DEFAULT partition holds rows before it: they could not be detached by month."""
    if not await is_partitioned(engine):
        raise ArchivedError(
            "this store's traversals are not partitioned (SQLite keeps one table): nothing"
            " to detach"
        )
    async with write_transaction(engine, exclusive=True) as conn:
        held = await conn.execute(text(MONTHS_HELD.format(table=DEFAULT)))
        stray = [m for y, mo in held if (m := Month(int(y), int(mo))) < month]
        if stray:
            raise ArchivedError(
                f"the DEFAULT partition holds events of {', '.join(map(str, stray[:3]))},"
                f" before {month}: make their months first ('headcount partitions create"
                f" --from {stray[0]} --to {stray[-1]}'), so they are detached with the rest"
            )
        boundary = await conn.scalar(text("SELECT headcount_archived_before()"))
        if boundary is not None and month.start <= boundary:
            return int(boundary)
        await conn.execute(
            text(
                "CREATE OR REPLACE FUNCTION headcount_archived_before() RETURNS bigint"
                f" LANGUAGE sql STABLE AS 'SELECT CAST({month.start} AS BIGINT)'"
            )
        )
    log.info("the log is closed before %s: older events are refused", month)
    return month.start


async def detach_before(engine: AsyncEngine, month: Month) -> list[Month]:
    """Detach every month before ``month`` from the log; returns them. Their tables stay in
    the database, out of the log, to be archived and dropped. The log must be closed there
    first (:func:`close_before`)."""
    boundary = await archived_before(engine)
    if boundary is None or boundary < month.start:
        raise ArchivedError(
            f"the log is not closed before {month}: close it first (partitions.close_before)"
        )
    async with write_transaction(engine, exclusive=True) as conn:
        await _wait_briefly(conn)
        detached = [m for m in await _attached_months(conn) if m < month]
        for m in detached:
            await conn.execute(text(f"ALTER TABLE traversals DETACH PARTITION {m.table}"))
    for m in detached:
        log.info("partition %s detached from the log", m.table)
    return detached


async def _wait_briefly(conn: AsyncConnection) -> None:
    """Making or detaching a partition locks the whole log for a moment; behind a long read
    it would make every other reader queue behind it. Give up instead (a store error: the
    service's upkeep tries again later, a command says so)."""
    await conn.execute(text(f"SET LOCAL lock_timeout = '{_LOCK_WAIT}'"))


async def _attached_months(conn: AsyncConnection) -> list[Month]:
    rows = await conn.execute(
        text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'traversals'::regclass"
        )
    )
    return sorted(m for (name,) in rows if (m := _month_of(name)) is not None)


async def _create_month(conn: AsyncConnection, month: Month) -> None:
    """A new month's partition. Rows the DEFAULT partition holds for it are moved in first:
    PostgreSQL refuses a partition for a range its DEFAULT partition has rows of."""
    span = {"lo": month.start, "hi": month.end}
    held = await conn.scalar(
        text(f"SELECT EXISTS (SELECT 1 FROM {DEFAULT} WHERE ts >= :lo AND ts < :hi)"), span
    )
    bounds = f"FOR VALUES FROM ({month.start}) TO ({month.end})"
    if not held:
        await conn.execute(text(f"CREATE TABLE {month.table} PARTITION OF traversals {bounds}"))
        return
    await conn.execute(text(f"LOCK TABLE {DEFAULT} IN ACCESS EXCLUSIVE MODE"))
    await conn.execute(
        text(
            f"CREATE TABLE {month.table} (LIKE traversals INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
        )
    )
    moved = await conn.execute(
        text(
            f"WITH moved AS (DELETE FROM {DEFAULT} WHERE ts >= :lo AND ts < :hi RETURNING *)"
            f" INSERT INTO {month.table} SELECT * FROM moved"
        ),
        span,
    )
    await conn.execute(text(f"ALTER TABLE traversals ATTACH PARTITION {month.table} {bounds}"))
    log.info("partition %s: %d rows moved in from %s", month.table, moved.rowcount, DEFAULT)


def _month_of(name: str) -> Month | None:
    found = _NAME.match(name)
    return None if found is None else Month(int(found[1]), int(found[2]))


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(ts / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class PartitionUpkeep:
    """The service's part that keeps months made ahead: at start, then every ``every_s``
    seconds (a day), the current month and the ``ahead`` next ones. A store that is down
    is tried again an hour later; nothing stops the service for it (a month not made in time
    only sends its rows to the DEFAULT partition, whence :func:`create` moves them)."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        ahead: int = 2,
        every_s: float = 86_400,
        retry_s: float = 3_600,
        clock: Clock = now_ms,
    ) -> None:
        self.engine = engine
        self.ahead = ahead
        self.every_s = every_s
        self.retry_s = retry_s
        self._clock = clock

    async def run(self) -> None:
        if self.engine.dialect.name != "postgresql":
            return
        while True:
            try:
                await ensure_ahead(self.engine, now=self._clock(), ahead=self.ahead)
            except (StoreError, ArchivedError) as e:
                log.warning("partitions: cannot make the coming months (%s); again later", e)
                await asyncio.sleep(self.retry_s)
                continue
            await asyncio.sleep(self.every_s)
