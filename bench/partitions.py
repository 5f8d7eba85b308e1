"""The partitioned log on PostgreSQL: what an append costs, and how fast the migration moves a
log into partitions, each against its limit measured in the same run.

    python bench/partitions.py [--quick] [--months N] [--rounds N] [--batches N] [--rows N]

- **Append.** Batches of 2,000 new traversals, time moving on through ``--months`` months
  (a partition each, all made), appended by headcount (``EventLog.append``: the partitioned
  table, its key trigger, the duplicate and conflict checks), against the limit: the same
  batches inserted by the bare driver (asyncpg, one ``INSERT ... SELECT FROM unnest ... ON
  CONFLICT DO NOTHING RETURNING``) into a table as the log was before partitioning (one
  table, ``UNIQUE(dpu_id, seq)``, the same indexes). Also the bare driver into the
  partitioned table, to tell the schema's cost from headcount's, and the bare driver into a
  partitioned copy without the key trigger whose statement inserts the keys itself (a CTE), the
  alternative to the trigger. (headcount's own append into the schema before partitions is
  gone: its statement now names the partitioned table's key.) Interleaved (limit, headcount,
  bare partitioned, by statement, ...); the figure is
  each one's events/s and its time over the limit's, the median of the rounds with their
  spread.
- **Migration.** ``--rows`` traversals in a store of the previous schema (0002), upgraded to
  partitions (``migrate.upgrade``), against the limit: the bare copy of the same rows into a
  new plain table with the same indexes (what any migration that moves the rows must do).

Needs a PostgreSQL server: ``HEADCOUNT_BENCH_POSTGRES_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``); a database of its own is made and dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from alembic import command
from sqlalchemy.engine import Connection

from headcount.domain.events import Traversal
from headcount.eventstore import migrate, partitions
from headcount.eventstore.partitions import Month
from headcount.eventstore.store import EventStore

BATCH = 2_000
FIRST = Month(2024, 1)
PLAIN = """
CREATE TABLE {name} (
  position BIGSERIAL PRIMARY KEY, dpu_id VARCHAR(64) NOT NULL, seq BIGINT NOT NULL,
  ts BIGINT NOT NULL, direction SMALLINT NOT NULL, received_at BIGINT NOT NULL,
  late BOOLEAN NOT NULL, UNIQUE (dpu_id, seq), CHECK (direction IN (1, -1)));
CREATE INDEX ON {name} (dpu_id, ts);
CREATE INDEX ON {name} (dpu_id, ts) WHERE late = true;
"""
#: The keys inserted by the statement itself instead of the trigger: a partitioned copy of the
#: log without the trigger, and its own keys table.
BY_STATEMENT = """
CREATE TABLE stmt_log (LIKE traversals INCLUDING DEFAULTS) PARTITION BY RANGE (ts);
CREATE TABLE stmt_log_default PARTITION OF stmt_log DEFAULT;
CREATE TABLE stmt_keys (dpu_id VARCHAR(64), seq BIGINT, PRIMARY KEY (dpu_id, seq));
"""
BY_STATEMENT_INDEXES = """
ALTER TABLE stmt_log ADD PRIMARY KEY (position, ts);
ALTER TABLE stmt_log ADD UNIQUE (dpu_id, seq, ts);
CREATE INDEX ON stmt_log (dpu_id, ts);
CREATE INDEX ON stmt_log (dpu_id, ts) WHERE late = true;
"""
BY_STATEMENT_INSERT = """
WITH b AS (SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::smallint[])
    AS b(d, s, t, r)),
  k AS (INSERT INTO stmt_keys (dpu_id, seq) SELECT d, s FROM b ON CONFLICT DO NOTHING
    RETURNING dpu_id, seq)
INSERT INTO stmt_log (dpu_id, seq, ts, direction, received_at, late)
SELECT b.d, b.s, b.t, b.r, 0, false FROM b JOIN k ON k.dpu_id = b.d AND k.seq = b.s
ON CONFLICT (dpu_id, seq, ts) DO NOTHING RETURNING position
"""
BARE_INSERT = """
INSERT INTO {table} (dpu_id, seq, ts, direction, received_at, late)
SELECT d, s, t, r, 0, false FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::smallint[])
  AS b(d, s, t, r)
ON CONFLICT ({target}) DO NOTHING RETURNING position
"""


def admin_url() -> str:
    return os.environ.get(
        "HEADCOUNT_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
    ).replace("+asyncpg", "")


@asynccontextmanager
async def database() -> AsyncIterator[str]:
    """A new database on the server, dropped after; its asyncpg URL."""
    admin = await asyncpg.connect(admin_url())
    name = f"headcount_bench_{uuid.uuid4().hex[:10]}"
    await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
    try:
        yield admin_url().rsplit("/", 1)[0] + f"/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def batches(count: int, months: int, *, dpus: int = 500, seed: int = 1) -> list[list[Traversal]]:
    """``count`` batches of new traversals, each DPU's seqs increasing, time moving on through
    the months as in a live log (a batch spans a few minutes, up to a minute out of order)."""
    rng = random.Random(seed)
    step = months * 30 * 86_400_000 // max(1, count * BATCH)
    seqs = [0] * dpus
    found = []
    for i in range(count):
        batch = []
        for j in range(BATCH):
            d = rng.randrange(dpus)
            seqs[d] += 1
            ts = FIRST.start + (i * BATCH + j) * step + rng.randrange(60_000)
            batch.append(Traversal(f"dpu{d}", seqs[d], ts, rng.choice((1, -1))))
        found.append(batch)
    return found


def columns(batch: list[Traversal]) -> tuple[list[str], list[int], list[int], list[int]]:
    return (
        [t.dpu_id for t in batch],
        [t.seq for t in batch],
        [t.ts for t in batch],
        [t.direction for t in batch],
    )


async def timed_bare(conn: asyncpg.Connection, sql: str, work: list[list[Traversal]]) -> float:
    started = time.perf_counter()
    for batch in work:
        async with conn.transaction():
            await conn.fetch(sql, *columns(batch))
    return time.perf_counter() - started


async def timed_headcount(store: EventStore, work: list[list[Traversal]]) -> float:
    started = time.perf_counter()
    for batch in work:
        await store.log.append(batch, received_at=0)
    return time.perf_counter() - started


async def bench_append(months: int, rounds: int, per_round: int) -> None:
    print(f"append: {rounds} rounds of {per_round} batches of {BATCH:,}, {months} months")
    async with database() as url:
        store = await EventStore.open(url.replace("postgresql://", "postgresql+asyncpg://"))
        conn = await asyncpg.connect(url)
        try:
            months_list = [FIRST]
            while len(months_list) < months + 1:
                months_list.append(months_list[-1].next())
            await partitions.create(store.engine, months_list)
            await conn.execute(PLAIN.format(name="plain"))
            await conn.execute(BY_STATEMENT)
            for m in months_list:
                await conn.execute(
                    f"CREATE TABLE stmt_{m.table} PARTITION OF stmt_log"
                    f" FOR VALUES FROM ({m.start}) TO ({m.end})"
                )
            await conn.execute(BY_STATEMENT_INDEXES)
            plain_sql = BARE_INSERT.format(table="plain", target="dpu_id, seq")
            part_sql = BARE_INSERT.format(table="traversals", target="dpu_id, seq, ts")
            # Disjoint key sets: each target only ever sees new events.
            work = batches((rounds + 1) * per_round * 4, months)
            chunks = [work[i : i + per_round] for i in range(0, len(work), per_round)]
            await timed_bare(conn, plain_sql, chunks.pop())  # warm-up
            await timed_headcount(store, chunks.pop())
            await timed_bare(conn, part_sql, chunks.pop())
            await timed_bare(conn, BY_STATEMENT_INSERT, chunks.pop())
            limit: list[float] = []
            ours: list[float] = []
            bare_part: list[float] = []
            by_statement: list[float] = []
            events = per_round * BATCH
            for r in range(rounds):
                limit.append(await timed_bare(conn, plain_sql, chunks.pop()))
                ours.append(await timed_headcount(store, chunks.pop()))
                bare_part.append(await timed_bare(conn, part_sql, chunks.pop()))
                by_statement.append(await timed_bare(conn, BY_STATEMENT_INSERT, chunks.pop()))
                print(
                    f"  round {r + 1}: limit {events / limit[-1]:,.0f}/s, headcount"
                    f" {events / ours[-1]:,.0f}/s, bare into partitions"
                    f" {events / bare_part[-1]:,.0f}/s, bare with keys by the statement"
                    f" {events / by_statement[-1]:,.0f}/s",
                    flush=True,
                )
            report("headcount append, partitioned", events, limit, ours)
            report("bare insert into the partitioned table", events, limit, bare_part)
            report("bare insert, keys by the statement, no trigger", events, limit, by_statement)
        finally:
            await conn.close()
            await store.close()


def report(what: str, events: int, limit: list[float], ours: list[float]) -> None:
    ratios = sorted(o / lim for o, lim in zip(ours, limit, strict=True))
    print(
        f"{what}: {events / statistics.median(ours):,.0f} events/s, limit"
        f" {events / statistics.median(limit):,.0f}/s; time over the limit"
        f" {statistics.median(ratios):.2f}x (range {ratios[0]:.2f}-{ratios[-1]:.2f})"
    )


async def bench_migration(rows: int, months: int) -> None:
    print(f"migration: {rows:,} traversals over {months} months")
    async with database() as url:
        store = await EventStore.open(url.replace("postgresql://", "postgresql+asyncpg://"))
        try:
            async with store.engine.begin() as sa_conn:

                def down(c: Connection) -> None:
                    command.downgrade(migrate.alembic_config(c), "0002")

                await sa_conn.run_sync(down)
        finally:
            await store.close()
        conn = await asyncpg.connect(url)
        try:
            for batch in batches(rows // BATCH, months, seed=2):
                await conn.fetch(
                    BARE_INSERT.format(table="traversals", target="dpu_id, seq"), *columns(batch)
                )
            await conn.execute("VACUUM ANALYZE traversals")
            started = time.perf_counter()
            await conn.execute(PLAIN.format(name="copy"))
            await conn.execute(
                "INSERT INTO copy SELECT position, dpu_id, seq, ts, direction, received_at, late"
                " FROM traversals"
            )
            limit = time.perf_counter() - started
            await conn.execute("DROP TABLE copy")
            started = time.perf_counter()
            store = await EventStore.open(url.replace("postgresql://", "postgresql+asyncpg://"))
            ours = time.perf_counter() - started
            held = len(await partitions.list_partitions(store.engine))
            await store.close()
        finally:
            await conn.close()
    print(
        f"migration: {rows / ours:,.0f} rows/s ({ours:.1f} s, {held} partitions), limit (bare"
        f" copy into one table) {rows / limit:,.0f} rows/s; {ours / limit:.2f}x the limit"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small, well under a minute")
    parser.add_argument("--months", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batches", type=int, default=10, help="batches per round and target")
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows the migration moves")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.batches, args.rows, args.months = 3, 2, 20_000, 6
    print(f"python bench/partitions.py {' '.join(sys.argv[1:])}; load {os.getloadavg()}")

    async def run() -> None:
        await bench_append(args.months, args.rounds, args.batches)
        await bench_migration(args.rows, args.months)

    try:
        asyncio.run(run())
    except OSError as e:
        print(f"bench/partitions.py needs PostgreSQL ({admin_url()}): {e}", file=sys.stderr)
        return 0
    print(f"load after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
