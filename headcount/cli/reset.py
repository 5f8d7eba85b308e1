"""``headcount reset``: set a space's count at a moment, through the running service's API, or
straight into the store when no service uses it. Never behind a running service's back: its
live count would not follow."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from headcount.argtypes import non_negative
from headcount.cli.common import (
    SERVICE_URL_ENV,
    TOKEN_ENV,
    Commands,
    UsageError,
    choose_topology,
    moment,
    store_parent,
    topology_parent,
)
from headcount.clock import now_ms
from headcount.domain.events import Reset
from headcount.domain.timefmt import format_ms
from headcount.errors import HeadcountError, StoreBusyError
from headcount.eventstore.lease import lease
from headcount.eventstore.store import EventStore
from headcount.ingest.wire import DEFAULT_MAX_SKEW_MS


def add_command(commands: Commands) -> None:
    cmd = commands.add_parser(
        "reset",
        parents=[
            store_parent(),
            topology_parent(
                "without --service, it names the spaces; the store's current topology is left"
                " as it is. Default: the store's current topology"
            ),
        ],
        help="set a space's count at a moment (a person counted the room)",
        description="Store a reset of SPACE to --count at --at (default: now) and print it as"
        " JSON. With --service the running service stores it and its live count follows at"
        " once; without, it is written to --store, which no service may be using.",
    )
    cmd.add_argument("space_id", metavar="SPACE")
    cmd.add_argument("--count", type=non_negative, required=True, help="the count")
    cmd.add_argument(
        "--at", metavar="ISO-8601", help="when it was counted, e.g. 2018-02-26T17:00:00Z"
    )
    cmd.add_argument(
        "--service",
        default=os.environ.get(SERVICE_URL_ENV),
        metavar="URL",
        help="the running service to make the reset through, e.g. http://127.0.0.1:8080"
        " (env HEADCOUNT_SERVICE_URL)",
    )
    cmd.add_argument(
        "--token",
        default=os.environ.get(TOKEN_ENV),
        metavar="TOKEN",
        help="--service: an API token with scope write (env HEADCOUNT_TOKEN, which other users"
        " of the machine cannot see in its process list as they can a flag)",
    )
    cmd.set_defaults(handler=run)


async def run(args: argparse.Namespace) -> int:
    at = None if args.at is None else moment("--at", args.at)
    if args.service:
        made = await _through_service(args.service, args.token, args.space_id, args.count, at)
    else:
        made = await _into_store(args, at)
    print(json.dumps(made))
    return 0


async def _through_service(
    url: str, token: str | None, space_id: str, count: int, at: int | None
) -> Any:
    from headcount.http.client import ServiceClient, ServiceError  # only --service talks HTTP

    try:
        service = ServiceClient(url, token=token)
    except ServiceError as e:
        raise UsageError(f"--service: {e}") from e
    try:
        async with service:
            return await service.reset(space_id, count, None if at is None else format_ms(at))
    except ServiceError as e:
        raise HeadcountError(str(e)) from e


async def _into_store(args: argparse.Namespace, at: int | None) -> dict[str, Any]:
    now = now_ms()
    ts = now if at is None else at
    if ts - now > DEFAULT_MAX_SKEW_MS:
        raise UsageError(f"--at: {args.at} is in the future; a reset says what was counted")
    async with await EventStore.open(args.store) as store:
        topology = (await choose_topology(args, store)).topology
        topology.space(args.space_id)  # raises UnknownSpaceError
        try:
            async with lease(store, exclusive=True, holder="headcount reset"):
                stored = await store.log.append_reset(Reset(args.space_id, ts, args.count, "cli"))
        except StoreBusyError:
            raise UsageError(
                "a headcount service (or an import or replay) is using this store: give"
                " --service URL of the running service (e.g. --service http://127.0.0.1:8080)"
                " so that the reset goes through it and its live count follows"
            ) from None
    return {
        "space_id": stored.space_id,
        "ts": format_ms(stored.ts),
        "count": stored.count,
        "kind": "reset",
    }
