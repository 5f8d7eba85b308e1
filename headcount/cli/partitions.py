"""``headcount partitions list|create|detach``: the monthly partitions of a PostgreSQL log.

``detach --before YYYY-MM`` takes old months out of the log without changing any answer from
that month on: it closes the log before the month (the store refuses older traversals and
resets from then on), writes for every space a snapshot as of the last millisecond before it
(so answers from then on never read the detached months), then detaches them. Counts at times
before the boundary are no longer exact afterwards: their events are out of the log.
"""

from __future__ import annotations

import argparse
import json
import sys

from headcount.cli.common import Commands, UsageError, choose_topology, store_parent
from headcount.cli.common import topology_parent as _topology_parent
from headcount.clock import now_ms
from headcount.errors import HeadcountError
from headcount.eventstore import partitions
from headcount.eventstore.lease import lease, rewrite_lease
from headcount.eventstore.partitions import Month
from headcount.eventstore.records import Snapshot
from headcount.eventstore.store import EventStore
from headcount.history import History
from headcount.history.events import SpaceView
from headcount.progress import Progress

#: Months made ahead of the current one by ``create`` without ``--to`` (and by the service).
AHEAD = 2


def add_command(commands: Commands) -> None:
    cmd = commands.add_parser(
        "partitions",
        help="list, make or detach the monthly partitions of a PostgreSQL store's log",
        description="The traversal log of a PostgreSQL store is partitioned by month (UTC)."
        " SQLite stores keep one table.",
    )
    verbs = cmd.add_subparsers(dest="verb", required=True, metavar="VERB")
    listing = verbs.add_parser(
        "list", parents=[store_parent()], help="print each partition as a JSON line"
    )
    listing.set_defaults(handler=run_list)
    create = verbs.add_parser(
        "create",
        parents=[store_parent()],
        help="make monthly partitions (rows the DEFAULT partition holds for them move in)",
    )
    create.add_argument("--from", dest="first", metavar="YYYY-MM", help="default: this month")
    create.add_argument(
        "--to", dest="last", metavar="YYYY-MM", help=f"default: {AHEAD} months after --from"
    )
    create.set_defaults(handler=run_create)
    detach = verbs.add_parser(
        "detach",
        parents=[
            store_parent(),
            _topology_parent("the snapshots written at the boundary are folded under it."),
        ],
        help="take the months before a month out of the log, to archive them",
    )
    detach.add_argument(
        "--before", required=True, metavar="YYYY-MM", help="the first month that stays"
    )
    detach.set_defaults(handler=run_detach)


def _month(flag: str, value: str) -> Month:
    try:
        return Month.parse(value)
    except ValueError as e:
        raise UsageError(f"{flag}: {e}") from e


async def _partitioned(store: EventStore) -> None:
    if not await partitions.is_partitioned(store.engine):
        raise UsageError(
            f"the store at {store.engine.url.render_as_string()} keeps its log in one table"
            " (SQLite, or PostgreSQL before 'headcount migrate'): no partitions"
        )


async def run_list(args: argparse.Namespace) -> int:
    async with await EventStore.open(args.store) as store:
        await _partitioned(store)
        found = await partitions.list_partitions(store.engine)
        boundary = await partitions.archived_before(store.engine)
    for p in found:
        month = None if p.month is None else str(p.month)
        print(
            json.dumps(
                {
                    "table": p.table,
                    "month": month,
                    "attached": p.attached,
                    "rows_estimate": p.rows,
                    "bytes": p.bytes,
                }
            )
        )
    if boundary is not None:
        closed = str(Month.of(boundary))
        print(f"the log is closed before {closed}: older events are refused", file=sys.stderr)
    return 0


async def run_create(args: argparse.Namespace) -> int:
    first = Month.of(now_ms()) if args.first is None else _month("--from", args.first)
    last = first if args.last is None else _month("--to", args.last)
    if args.last is None:
        for _ in range(AHEAD):
            last = last.next()
    if last < first:
        raise UsageError(f"--to {last} is before --from {first}")
    months = [first]
    while months[-1] < last:
        months.append(months[-1].next())
    async with await EventStore.open(args.store) as store:
        await _partitioned(store)
        made = await partitions.create(store.engine, months)
    print(json.dumps({"made": [m.table for m in made], "months": [str(m) for m in months]}))
    return 0


async def run_detach(args: argparse.Namespace) -> int:
    month = _month("--before", args.before)
    if month.start > Month.of(now_ms()).start:
        raise UsageError(
            f"--before {month}: the current month and later ones stay in the log; give a"
            " month no later than this one"
        )
    async with await EventStore.open(args.store) as store:
        await _partitioned(store)
        choice = await choose_topology(args, store)
        # The store's lease shared, as a service holds it, and the rewrite lock alone: a
        # replay, of the store or of a shard (which would supersede the snapshots written
        # here), neither runs beside a detach nor starts during one.
        async with (
            lease(store, exclusive=False, holder="headcount partitions detach"),
            rewrite_lease(store, exclusive=True, holder="headcount partitions detach"),
        ):
            boundary = await partitions.close_before(store.engine, month)
            history = History(store, choice.topology)
            written = await _snapshots_at(store, history, boundary - 1)
            detached = await partitions.detach_before(store.engine, month)
    print(
        json.dumps(
            {
                "closed_before": str(Month.of(boundary)),
                "snapshots": written,
                "detached": [m.table for m in detached],
            }
        )
    )
    print(
        f"counts from {Month.of(boundary)} on are unchanged; counts before it are no longer"
        " exact (their events left the log). The detached tables are still in the database:"
        " archive each (pg_dump -t TABLE), then DROP TABLE it. A replay needs the months it"
        " folds: run it with --from at or after the boundary, under the same topology",
        file=sys.stderr,
    )
    return 0


async def _snapshots_at(store: EventStore, history: History, as_of: int) -> int:
    """A snapshot of every space as of ``as_of``, folded from the whole log; answers at and
    after it start there. A snapshot the store drops (an event arrived for it meanwhile) is
    folded again once; a second miss stops the detach before anything is detached."""
    spaces = sorted(history.topology.spaces)
    progress = Progress("snapshots at the boundary", total=len(spaces))
    for done, space_id in enumerate(spaces, 1):
        view = SpaceView.of(history.topology, space_id)
        for _attempt in range(2):
            head = await store.log.head()
            answer = await history.count_at(space_id, as_of)
            taken = Snapshot(space_id, view.fingerprint, answer.state, head)
            if await store.snapshots.add([taken], view.sources):
                break
        else:
            raise HeadcountError(
                f"space {space_id}: events kept arriving for it before the boundary while its"
                " snapshot was written; run the command again"
            )
        progress.update(done)
    progress.finish(len(spaces))
    return len(spaces)
