"""``headcount replay``: fold the log again under a topology; ``--verify``, ``--dry-run``."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from typing import TYPE_CHECKING

from headcount.cli.common import (
    EXIT_FAILED,
    SERVICE_URL_ENV,
    TOKEN_ENV,
    Commands,
    UsageError,
    choose_topology,
    moment,
    record,
    recorded_topology,
    shard_spec,
    snapshots_parent,
    store_parent,
    topology_parent,
)
from headcount.clock import now_ms
from headcount.domain.fold import SpaceState
from headcount.domain.shards import Shard
from headcount.domain.timefmt import format_ms
from headcount.domain.topology import Topology, TopologyChoice, document_digest
from headcount.errors import HeadcountError
from headcount.eventstore.lease import lease, rewrite_lease, shard_lease
from headcount.eventstore.partitions import archived_before
from headcount.eventstore.store import EventStore
from headcount.history import History
from headcount.history.compare import compare_topologies
from headcount.history.live_check import live_mismatches
from headcount.history.replay import Mismatch, Replay
from headcount.progress import Progress

if TYPE_CHECKING:
    from headcount.http.client import ServiceClient


def add_command(commands: Commands) -> None:
    cmd = commands.add_parser(
        "replay",
        parents=[
            store_parent(),
            topology_parent(
                "a replay makes it the store's current topology; --verify and --dry-run only read"
                " it. Default: the store's current topology (--dry-run needs the file: the"
                " corrected topology to compare)"
            ),
            snapshots_parent(),
        ],
        help="fold the log again under a topology: new snapshots, --verify, --dry-run",
        description="Recompute every space's state from the event log under the topology"
        " (--topology FILE, which then becomes the store's current one; default: the store's)"
        " and append its snapshots as a new generation that supersedes the old; nothing is"
        " edited or deleted. The store must not be in use: stop 'headcount serve' first and"
        " start it again with the same topology afterwards. --verify and --dry-run write"
        " nothing and may run beside a service.",
    )
    cmd.add_argument(
        "--space",
        action="append",
        metavar="ID",
        help="replay only this space (repeat for several; default: every space)",
    )
    cmd.add_argument(
        "--shard",
        type=shard_spec,
        metavar="I/N",
        help="replay only the spaces of shard I of N (as 'serve --shard I/N' owns them), under"
        " the store's current topology, while the other shards keep serving: stop shard I's"
        " processes (its owner and standby) first; the replay holds the shard's lock",
    )
    cmd.add_argument(
        "--from",
        dest="from_ts",
        metavar="ISO-8601",
        help="keep snapshots before this moment that are valid under the topology and"
        " replay from the newest of them (default: from the start of the log)",
    )
    mode = cmd.add_mutually_exclusive_group()
    mode.add_argument(
        "--verify",
        action="store_true",
        help="fold from scratch and compare with the stored snapshots (and with --service,"
        " the live counts); print each mismatch, exit 1 on any",
    )
    mode.add_argument(
        "--dry-run",
        action="store_true",
        help="print how each space's counts at --at moments would change under --topology"
        " FILE against the store's current topology, writing nothing",
    )
    cmd.add_argument(
        "--at",
        action="append",
        metavar="ISO-8601",
        help="--dry-run: a moment to compare counts at (repeat; default: now)",
    )
    cmd.add_argument(
        "--service",
        metavar="URL",
        help="--verify: also compare the live counts of the service at this URL,"
        " e.g. http://127.0.0.1:8080 (env HEADCOUNT_SERVICE_URL)",
    )
    cmd.add_argument(
        "--token",
        default=os.environ.get(TOKEN_ENV),
        metavar="TOKEN",
        help="--service: the API token (scope read) of a service started with --tokens"
        " (env HEADCOUNT_TOKEN, which other users of the machine cannot see in its process"
        " list as they can a flag)",
    )
    cmd.set_defaults(handler=run)


async def run(args: argparse.Namespace) -> int:
    from_ts = moment("--from", args.from_ts) if args.from_ts is not None else None
    if args.at and not args.dry_run:
        raise UsageError("--at is for --dry-run: it names the moments to compare")
    if args.service and not args.verify:
        raise UsageError("--service is for --verify: it names the service to compare with")
    async with await EventStore.open(args.store) as store:
        if args.dry_run:
            return await _dry_run(args, store)
        choice = await choose_topology(args, store)
        if args.shard is not None:
            args.space = await _shard_spaces(args, store, choice)
        if args.verify:
            return await _verify(args, store, choice.topology)
        await _refuse_detached(store, from_ts)
        document = choice.document or choice.topology.to_toml()
        async with contextlib.AsyncExitStack() as holding:
            if args.shard is None:
                await holding.enter_async_context(
                    lease(store, exclusive=True, holder="headcount replay")
                )
            else:  # the other shards go on serving: the store shared, this shard alone
                await holding.enter_async_context(
                    lease(store, exclusive=False, holder="headcount replay --shard")
                )
                await holding.enter_async_context(
                    shard_lease(store, args.shard, wait=False, holder="headcount replay")
                )
                await holding.enter_async_context(
                    rewrite_lease(store, exclusive=False, holder="headcount replay --shard")
                )
            replay = Replay(
                store,
                choice.topology,
                space_ids=args.space,
                snapshot_every=args.snapshot_every,
                progress=Progress(
                    "replaying", total=None if from_ts else await store.log.count_traversals()
                ),
                # Alone with its store, nothing else on the loop: the log read on its thread.
                # A shard's replay holds leases beside the other shards: left in the worker.
                scan_on_loop=args.shard is None,
            )
            summary = await replay.run(from_ts=from_ts, digest=document_digest(document))
            await record(store, choice)
    shown = {} if args.shard is None else {"shard": str(args.shard)}
    print(json.dumps({"topology": choice.origin, **shown, **summary.as_dict()}, indent=2))
    return 0


async def _shard_spaces(
    args: argparse.Namespace, store: EventStore, choice: TopologyChoice
) -> list[str]:
    """The spaces ``--shard`` replays (those of ``--space`` it owns, if given). The other
    shards keep running under the store's topology, so only that one can be replayed."""
    shard: Shard = args.shard
    current = await recorded_topology(store)
    if current is None or current.topology != choice.topology:
        raise UsageError(
            f"--shard {shard} replays under the store's current topology, which the other"
            " shards run with; a corrected topology changes what every shard counts: stop them"
            " all and replay without --shard"
        )
    owned = shard.spaces(choice.topology)
    if args.space:
        others = [s for s in args.space if s in choice.topology.spaces and not shard.owns(s)]
        if others:
            raise UsageError(
                f"--space {others[0]} is not in shard {shard}: it belongs to shard"
                f" {shard.owner_of(others[0])}/{shard.count}"
            )
        return [s for s in owned if s in args.space] + [
            s for s in args.space if s not in choice.topology.spaces
        ]
    return owned


async def _refuse_detached(store: EventStore, from_ts: int | None) -> None:
    """A replay folds what the log holds: from before months detached from it, its snapshots
    would miss their events and supersede the right ones."""
    closed = await archived_before(store.engine)
    if closed is not None and (from_ts is None or from_ts < closed):
        raise UsageError(
            f"the log before {format_ms(closed)} was detached ('headcount partitions"
            f" detach'): replay with --from {format_ms(closed)} or later, or attach those"
            " months again first"
        )


async def _verify(args: argparse.Namespace, store: EventStore, topology: Topology) -> int:
    url = args.service or os.environ.get(SERVICE_URL_ENV)  # the variable only for --verify
    service = _service(url, args.token) if url else None  # a bad URL fails before the fold
    replay = Replay(
        store,
        topology,
        space_ids=args.space,
        progress=Progress("verifying", total=await store.log.count_traversals()),
        scan_on_loop=True,
    )
    summary, mismatches, states = await replay.verify()
    if service is not None:
        mismatches += await _live_mismatches(service, History(store, topology), states)
    for mismatch in mismatches:
        print(mismatch.describe())
    print(json.dumps({**summary.as_dict(), "mismatches": len(mismatches)}, indent=2))
    return EXIT_FAILED if mismatches else 0


def _service(url: str, token: str | None) -> ServiceClient:
    from headcount.http.client import ServiceClient, ServiceError  # only --service talks HTTP

    try:
        return ServiceClient(url, token=token)
    except ServiceError as e:
        raise UsageError(f"--service: {e}") from e


async def _live_mismatches(
    service: ServiceClient, history: History, folded: dict[str, SpaceState]
) -> list[Mismatch]:
    from headcount.http.client import ServiceError

    try:
        async with service:
            return await live_mismatches(history, folded, service)
    except ServiceError as e:
        raise HeadcountError(f"{e}; check --service") from e


async def _dry_run(args: argparse.Namespace, store: EventStore) -> int:
    if args.topology is None:
        raise UsageError("--dry-run needs --topology FILE: the corrected topology to compare")
    recorded = await recorded_topology(store)
    if recorded is None:
        raise UsageError("--dry-run: the store has no topology recorded to compare against")
    corrected = await choose_topology(args, store)
    times = [now_ms()] if not args.at else [moment("--at", at) for at in args.at]
    comparison = await compare_topologies(
        store,
        recorded.topology,
        corrected.topology,
        times,
        space_ids=args.space,
        progress=Progress("folding"),
    )
    print(f"{'space':<20} {'time':<24} {'before':>8} {'after':>8}")
    for count in comparison.counts:
        before = "new" if count.before is None else str(count.before)
        mark = "  changed" if count.changed else ""
        print(f"{count.space_id:<20} {format_ms(count.ts):<24} {before:>8} {count.after:>8}{mark}")
    print(
        f"{comparison.changed} of {len(comparison.counts)} counts change"
        f" ({len(comparison.unchanged)} spaces are folded the same under both topologies);"
        f" {comparison.summary.rows:,} events read, nothing written",
        file=sys.stderr,
    )
    return 0
