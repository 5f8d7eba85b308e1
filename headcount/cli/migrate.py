"""``headcount migrate``: create the store's schema or upgrade it to this release."""

from __future__ import annotations

import argparse
import sys

from headcount.cli.common import Commands, store_parent
from headcount.eventstore.store import EventStore


def add_command(commands: Commands) -> None:
    cmd = commands.add_parser(
        "migrate",
        parents=[store_parent()],
        help="create the store's schema or upgrade it to this release",
    )
    cmd.set_defaults(handler=run)


async def run(args: argparse.Namespace) -> int:
    async with await EventStore.open(args.store):
        print(f"store {args.store} is at the current schema", file=sys.stderr)
    return 0
