"""``headcount``: the command line. ``headcount --help`` lists the commands."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from headcount.argtypes import at_least_one
from headcount.clock import now_ms
from headcount.domain.fold import SpaceState
from headcount.domain.timefmt import format_ms, parse_iso
from headcount.domain.topology import Topology, document_digest
from headcount.errors import (
    ConfigError,
    HeadcountError,
    InvalidTimestampError,
    PortTakenError,
    UnknownSpaceError,
)
from headcount.eventstore.engine import DEFAULT_URL
from headcount.eventstore.lease import lease
from headcount.eventstore.store import EventStore
from headcount.history import DEFAULT_SNAPSHOT_EVERY, History
from headcount.history.replay import Mismatch, Replay
from headcount.importer.csvfile import read_csv
from headcount.importer.load import import_csv
from headcount.progress import Progress
from headcount.sim.command import add_command as add_simulate

#: Exit codes: 1 the work failed, 2 the command was given something it cannot use.
EXIT_FAILED = 1
EXIT_USAGE = 2

Handler = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]


class UsageError(HeadcountError):
    """The command line names something that does not exist or cannot be used."""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``headcount`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    handler: Handler = args.handler
    try:
        return asyncio.run(handler(args))
    except (UsageError, UnknownSpaceError, ConfigError) as e:
        print(f"headcount {args.command}: {e}", file=sys.stderr)
        return EXIT_USAGE
    except HeadcountError as e:
        print(f"headcount {args.command}: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"headcount {args.command}: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    """The ``headcount`` command line's parser; each command's handler is ``args.handler``."""
    parser = argparse.ArgumentParser(
        prog="headcount",
        description="Exact people counts for every space, now and at any past moment.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug detail")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    store = argparse.ArgumentParser(add_help=False)
    store.add_argument(
        "--store",
        default=os.environ.get("HEADCOUNT_STORE", DEFAULT_URL),
        metavar="URL",
        help="event store: sqlite+aiosqlite:///FILE or postgresql+asyncpg://USER@HOST/DB"
        " (env HEADCOUNT_STORE; default %(default)s)",
    )
    topology = argparse.ArgumentParser(add_help=False)
    topology.add_argument(
        "--topology",
        type=Path,
        default=os.environ.get("HEADCOUNT_TOPOLOGY"),
        metavar="FILE",
        help="topology TOML file (env HEADCOUNT_TOPOLOGY); it becomes the store's current"
        " topology. Default: the topology the store was last used with",
    )

    snapshots = argparse.ArgumentParser(add_help=False)
    snapshots.add_argument(
        "--snapshot-every",
        type=at_least_one,
        default=DEFAULT_SNAPSHOT_EVERY,
        metavar="N",
        help="snapshot each space every N events (default %(default)s)",
    )

    cmd = commands.add_parser(
        "import",
        parents=[store, topology, snapshots],
        help="load DPU rows from a CSV export into the store",
        description="Load a CSV export (columns timestamp, direction, dpu_id) into the store."
        " Exact duplicate rows are one event; importing a file again stores nothing new."
        " Malformed rows are reported with their line and skipped. Without --topology and"
        " with none in the store, a topology.toml beside the CSV file is used.",
    )
    cmd.add_argument("csv", type=Path, metavar="CSV")
    cmd.add_argument(
        "--strict", action="store_true", help="abort on any malformed row, writing nothing"
    )
    cmd.set_defaults(handler=_import)

    cmd = commands.add_parser(
        "count",
        parents=[store, topology],
        help="print a space's count now or at a moment, as JSON",
        description="Print {space_id, ts, count} for a space, from snapshots and the log.",
    )
    cmd.add_argument("space_id", metavar="SPACE")
    cmd.add_argument(
        "--at", metavar="ISO-8601", help="the moment, e.g. 2018-02-26T17:00:00Z (default: now)"
    )
    cmd.set_defaults(handler=_count)

    embedded = argparse.ArgumentParser(add_help=False)
    embedded.add_argument(
        "--mqtt-port",
        type=int,
        default=int(os.environ.get("HEADCOUNT_MQTT_PORT", "1883")),
        metavar="N",
        help="the embedded broker's port (env HEADCOUNT_MQTT_PORT; default %(default)s)",
    )
    embedded.add_argument(
        "--broker-config",
        type=Path,
        default=os.environ.get("HEADCOUNT_BROKER_CONFIG"),
        metavar="FILE",
        help="amqtt YAML overriding the embedded broker's defaults (see broker_config/)",
    )

    cmd = commands.add_parser(
        "serve",
        parents=[store, topology, snapshots, embedded],
        help="run the service: MQTT ingest, per-space actors, the HTTP API",
        description="Run headcount: an embedded MQTT broker (or --broker URL), the event"
        " store, one actor per space and the HTTP API. SIGINT/SIGTERM stop it cleanly.",
    )
    cmd.add_argument(
        "--demo",
        action="store_true",
        help="use the seed topology and import the seed data if the store is empty",
    )
    cmd.add_argument(
        "--broker",
        default=os.environ.get("HEADCOUNT_BROKER"),
        metavar="URL",
        help="external MQTT broker, mqtt://user:pass@host:port (env HEADCOUNT_BROKER;"
        " default: start the embedded broker)",
    )
    cmd.add_argument(
        "--http-port",
        type=int,
        default=int(os.environ.get("HEADCOUNT_HTTP_PORT", "8080")),
        metavar="N",
        help="HTTP API port (env HEADCOUNT_HTTP_PORT; default %(default)s)",
    )
    cmd.add_argument(
        "--host",
        default=os.environ.get("HEADCOUNT_HOST", "127.0.0.1"),
        metavar="ADDR",
        help="address the HTTP API and the embedded broker listen on"
        " (env HEADCOUNT_HOST; default %(default)s)",
    )
    cmd.add_argument(
        "--client-id",
        default=os.environ.get("HEADCOUNT_CLIENT_ID", "headcount"),
        metavar="ID",
        help="MQTT client id of the service's persistent session (default %(default)s)",
    )
    cmd.set_defaults(handler=_serve)

    add_simulate(commands)

    cmd = commands.add_parser(
        "broker",
        parents=[embedded],
        help="run the embedded MQTT broker alone, for 'serve --broker' in another process",
        description="Run the embedded amqtt broker in a process of its own until SIGINT or"
        " SIGTERM. 'headcount serve --broker URL' then survives being killed without losing"
        " what the broker accepted, and on two cores ingests faster than with the broker"
        " inside (BENCHMARKS.md). The service user's password comes from"
        " HEADCOUNT_BROKER_PASSWORD; without it one is generated and the URL for"
        " 'serve --broker' is printed on stdout.",
    )
    cmd.add_argument(
        "--host",
        default=os.environ.get("HEADCOUNT_HOST", "127.0.0.1"),
        metavar="ADDR",
        help="address to listen on (env HEADCOUNT_HOST; default %(default)s)",
    )
    cmd.set_defaults(handler=_broker)

    cmd = commands.add_parser(
        "replay",
        parents=[store, topology, snapshots],
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
        default=os.environ.get("HEADCOUNT_SERVICE_URL"),
        metavar="URL",
        help="--verify: also compare the live counts of the service at this URL,"
        " e.g. http://127.0.0.1:8080 (env HEADCOUNT_SERVICE_URL)",
    )
    cmd.set_defaults(handler=_replay)

    cmd = commands.add_parser(
        "migrate",
        parents=[store],
        help="create the store's schema or upgrade it to this release",
    )
    cmd.set_defaults(handler=_migrate)
    return parser


@dataclass(frozen=True, slots=True)
class _TopologyChoice:
    topology: Topology
    document: str | None  # the file's text, when it came from a file
    origin: str


async def _choose_topology(
    args: argparse.Namespace, store: EventStore, *, beside: Path | None = None
) -> _TopologyChoice:
    """The topology to work under: ``--topology``, else the store's current one, else a
    ``topology.toml`` beside ``beside``. Nothing is recorded here: see :func:`_record`."""
    path: Path | None = args.topology
    if path is None:
        current = await store.topologies.current()
        if current is not None:
            document, origin = current
            source = f"{origin} (as recorded in the store)"
            return _TopologyChoice(Topology.from_toml(document, source=source), None, origin)
        if beside is not None and (beside.parent / "topology.toml").is_file():
            path = beside.parent / "topology.toml"
            print(f"using topology {path} (found beside {beside.name})", file=sys.stderr)
        else:
            raise UsageError(
                "no topology: pass --topology FILE (or set HEADCOUNT_TOPOLOGY);"
                " the store has none recorded yet"
            )
    try:
        document = path.read_text(encoding="utf-8")
    except OSError as e:
        raise UsageError(f"cannot read topology file {path}: {e.strerror}") from e
    return _TopologyChoice(Topology.from_toml(document, source=str(path)), document, str(path))


async def _record(store: EventStore, choice: _TopologyChoice) -> None:
    """Make a topology read from a file the store's current one."""
    if choice.document is not None:
        await store.topologies.record(choice.document, origin=choice.origin)


async def _serve(args: argparse.Namespace) -> int:
    # The service's imports stay out of the offline commands.
    from headcount.service import Settings, TopologyChoice, demo_files, preflight, serve

    logging.getLogger().setLevel(logging.DEBUG if args.verbose else logging.INFO)
    for noisy in ("amqtt", "transitions", "alembic"):  # one line per connection or migration
        logging.getLogger(noisy).setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    settings = Settings(
        store_url=args.store,
        broker_url=args.broker,
        host=args.host,
        http_port=args.http_port,
        mqtt_port=args.mqtt_port,
        broker_config=args.broker_config,
        client_id=args.client_id,
        snapshot_every=args.snapshot_every,
        demo=args.demo,
    )
    preflight(settings)  # configuration problems are reported before the store is touched
    if args.demo and args.topology is None:
        document, _ = demo_files()
        topology = Topology.from_toml(document, source="seed topology")
        return await serve(settings, TopologyChoice(topology, document, "seed topology"))
    async with await EventStore.open(args.store) as store:
        choice = await _choose_topology(args, store)
    return await serve(settings, TopologyChoice(choice.topology, choice.document, choice.origin))


async def _broker(args: argparse.Namespace) -> int:
    import signal

    from headcount.ingest.broker import PASSWORD_ENV, BrokerError, EmbeddedBroker

    logging.getLogger().setLevel(logging.DEBUG if args.verbose else logging.INFO)
    for noisy in ("amqtt", "transitions"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    broker = EmbeddedBroker(args.host, args.mqtt_port, config_file=args.broker_config)
    try:
        async with broker:
            if not os.environ.get(PASSWORD_ENV):
                print(broker.url, flush=True)  # the generated password: only here
            logging.getLogger(__name__).info(
                "MQTT broker on %s:%d; stop it with SIGINT or SIGTERM", broker.host, broker.port
            )
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await stop.wait()
    except BrokerError as e:
        raise PortTakenError(f"{e}; choose another port with --mqtt-port") from e
    return 0


async def _migrate(args: argparse.Namespace) -> int:
    async with await EventStore.open(args.store):
        print(f"store {args.store} is at the current schema", file=sys.stderr)
    return 0


async def _count(args: argparse.Namespace) -> int:
    ts = now_ms() if args.at is None else _moment("--at", args.at)
    async with await EventStore.open(args.store) as store:
        choice = await _choose_topology(args, store)
        answer = await History(store, choice.topology).count_at(args.space_id, ts)
    print(json.dumps({"space_id": answer.space_id, "ts": format_ms(ts), "count": answer.count}))
    return 0


async def _import(args: argparse.Namespace) -> int:
    path: Path = args.csv
    if not path.is_file():
        raise UsageError(f"cannot read {path}: no such file")
    async with await EventStore.open(args.store) as store:
        choice = await _choose_topology(args, store, beside=path)
        if args.strict:
            errors = _read_errors(path)
            if errors:
                for line in errors[:50]:
                    print(line, file=sys.stderr)
                more = " (first 50 shown)" if len(errors) > 50 else ""
                raise HeadcountError(
                    f"{path}: {len(errors)} malformed rows{more}; --strict wrote nothing."
                    " Fix the rows or import without --strict to skip them"
                )
        with _open_csv(path) as lines:
            read_csv(lines)  # checks the header before anything is written
        async with lease(store, exclusive=False, holder="headcount import"):
            summary = await _import_rows(args, store, choice, path)
    print(json.dumps(summary, indent=2))
    return 0


async def _import_rows(
    args: argparse.Namespace, store: EventStore, choice: _TopologyChoice, path: Path
) -> dict[str, Any]:
    topology = choice.topology
    await _record(store, choice)
    summary = (
        await import_csv(
            store,
            topology,
            path,
            on_row_error=lambda e: print(
                f"{path}:{e.line}: {e.reason} (row skipped)", file=sys.stderr
            ),
            progress=Progress(f"importing {path.name}"),
        )
    ).as_dict()
    progress = Progress("snapshots", total=len(topology.spaces))
    done = 0

    def on_space(_space_id: str, _written: int) -> None:
        nonlocal done
        done += 1
        progress.update(done)

    history = History(store, topology, snapshot_every=args.snapshot_every)
    summary["snapshots written"] = await history.refresh_snapshots(on_space=on_space)
    progress.finish(done)
    return summary


async def _replay(args: argparse.Namespace) -> int:
    from_ts = _moment("--from", args.from_ts) if args.from_ts is not None else None
    if args.at and not args.dry_run:
        raise UsageError("--at is for --dry-run: it names the moments to compare")
    if args.service and not args.verify:
        raise UsageError("--service is for --verify: it names the service to compare with")
    async with await EventStore.open(args.store) as store:
        if args.dry_run:
            return await _replay_dry_run(args, store)
        choice = await _choose_topology(args, store)
        if args.verify:
            return await _replay_verify(args, store, choice.topology)
        document = choice.document or choice.topology.to_toml()
        async with lease(store, exclusive=True, holder="headcount replay"):
            replay = Replay(
                store,
                choice.topology,
                space_ids=args.space,
                snapshot_every=args.snapshot_every,
                progress=Progress(
                    "replaying", total=None if from_ts else await store.log.count_traversals()
                ),
            )
            summary = await replay.run(from_ts=from_ts, digest=document_digest(document))
            await _record(store, choice)
    print(json.dumps({"topology": choice.origin, **summary.as_dict()}, indent=2))
    return 0


async def _replay_verify(args: argparse.Namespace, store: EventStore, topology: Topology) -> int:
    replay = Replay(
        store,
        topology,
        space_ids=args.space,
        progress=Progress("verifying", total=await store.log.count_traversals()),
    )
    summary, mismatches, states = await replay.verify()
    if args.service:
        mismatches += await _live_mismatches(args.service, store, topology, states)
    for mismatch in mismatches:
        print(mismatch.describe())
    print(json.dumps({**summary.as_dict(), "mismatches": len(mismatches)}, indent=2))
    return EXIT_FAILED if mismatches else 0


async def _live_mismatches(
    url: str, store: EventStore, topology: Topology, folded: dict[str, SpaceState]
) -> list[Mismatch]:
    """Spaces whose live count differs from the log's fold. Events may arrive while the log
    is folded: a space that differs is asked again after folding it afresh, and only a
    difference that stays is reported."""
    import aiohttp  # only --verify --service talks HTTP

    history = History(store, topology)
    found: list[Mismatch] = []
    try:
        async with aiohttp.ClientSession(base_url=url.rstrip("/") + "/") as http:
            live = await _live_counts(http, "spaces")
            for space_id, state in folded.items():
                if live.get(space_id) == state.count:
                    continue
                now = now_ms()
                fresh = (await history.count_at(space_id, now)).state
                answer = await _live_counts(http, f"spaces/{space_id}/count")
                if answer.get(space_id) != fresh.count:
                    stored = SpaceState(now, answer.get(space_id, 0))
                    found.append(Mismatch(space_id, now, stored, fresh, what="live count"))
    except aiohttp.ClientError as e:
        raise HeadcountError(
            f"cannot ask the service at {url} for its live counts: {e}; check --service"
        ) from e
    return found


async def _live_counts(http: Any, path: str) -> dict[str, int]:
    async with http.get(path) as response:
        response.raise_for_status()
        body = await response.json()
    if "spaces" in body:
        return {s["id"]: s["count"] for s in body["spaces"]}
    return {body["space_id"]: body["count"]}


async def _replay_dry_run(args: argparse.Namespace, store: EventStore) -> int:
    if args.topology is None:
        raise UsageError("--dry-run needs --topology FILE: the corrected topology to compare")
    recorded = await store.topologies.current()
    if recorded is None:
        raise UsageError("--dry-run: the store has no topology recorded to compare against")
    before = Topology.from_toml(recorded[0], source=f"{recorded[1]} (as recorded in the store)")
    after = (await _choose_topology(args, store)).topology
    times = sorted({now_ms()} if not args.at else {_moment("--at", at) for at in args.at})
    space_ids = args.space or [
        space_id
        for space_id in after.spaces
        if space_id not in before.spaces
        or before.fingerprint(space_id) != after.fingerprint(space_id)
    ]
    summary, states = await Replay(
        store, after, space_ids=space_ids, progress=Progress("folding")
    ).states_at(times)
    history = History(store, before)
    changed = 0
    print(f"{'space':<20} {'time':<24} {'before':>8} {'after':>8}")
    for space_id in space_ids:
        for ts, state in zip(times, states[space_id], strict=True):
            old: int | None = None
            if space_id in before.spaces:
                old = (await history.count_at(space_id, ts)).count
            mark = "" if old == state.count else "  changed"
            changed += old != state.count
            shown = "new" if old is None else str(old)
            print(f"{space_id:<20} {format_ms(ts):<24} {shown:>8} {state.count:>8}{mark}")
    print(
        f"{changed} of {len(space_ids) * len(times)} counts change"
        f" ({len(after.spaces) - len(space_ids)} spaces are folded the same under both"
        f" topologies); {summary.rows:,} events read, nothing written",
        file=sys.stderr,
    )
    return 0


def _moment(flag: str, text: str) -> int:
    try:
        return parse_iso(text)
    except InvalidTimestampError as e:
        raise UsageError(f"{flag}: {e}") from e


def _read_errors(path: Path) -> list[str]:
    with _open_csv(path) as lines:
        return [f"{path}:{e.line}: {e.reason}" for b in read_csv(lines) for e in b.errors]


def _open_csv(path: Path) -> Any:
    try:
        return path.open(encoding="utf-8", newline="")
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from e
