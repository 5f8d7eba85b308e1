"""``headcount count``: a space's count now or at a moment, as JSON."""

from __future__ import annotations

import argparse
import json

from headcount.cli.common import Commands, choose_topology, moment, store_parent, topology_parent
from headcount.clock import now_ms
from headcount.domain.timefmt import format_ms
from headcount.eventstore.store import EventStore
from headcount.history import History


def add_command(commands: Commands) -> None:
    cmd = commands.add_parser(
        "count",
        parents=[
            store_parent(),
            topology_parent(
                "the count is folded under it and the store's current topology is left as it is."
                " Default: the store's current topology"
            ),
        ],
        help="print a space's count now or at a moment, as JSON",
        description="Print {space_id, ts, count} for a space, from snapshots and the log.",
    )
    cmd.add_argument("space_id", metavar="SPACE")
    cmd.add_argument(
        "--at", metavar="ISO-8601", help="the moment, e.g. 2018-02-26T17:00:00Z (default: now)"
    )
    cmd.set_defaults(handler=run)


async def run(args: argparse.Namespace) -> int:
    ts = now_ms() if args.at is None else moment("--at", args.at)
    async with await EventStore.open(args.store) as store:
        choice = await choose_topology(args, store)
        answer = await History(store, choice.topology).count_at(args.space_id, ts)
    print(json.dumps({"space_id": answer.space_id, "ts": format_ms(ts), "count": answer.count}))
    return 0
