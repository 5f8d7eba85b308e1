"""What the commands share: exit codes, :class:`UsageError`, the parent parsers of the options
several commands take, choosing the topology to work under, and reading a moment."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeAlias

from headcount.argtypes import at_least_one
from headcount.cli.topology_cache import read_topology
from headcount.domain.shards import Shard, ShardSpecError
from headcount.domain.timefmt import parse_iso
from headcount.domain.topology import Topology, TopologyChoice, document_text
from headcount.errors import HeadcountError, InvalidTimestampError
from headcount.eventstore.engine import DEFAULT_URL
from headcount.eventstore.store import EventStore
from headcount.history import DEFAULT_SNAPSHOT_EVERY
from headcount.ingest.tls import ServerTls

#: Exit codes: 1 the work failed, 2 the command was given something it cannot use.
EXIT_FAILED = 1
EXIT_USAGE = 2
#: Where the commands that talk to a running service (replay --verify, reset) find its URL
#: and their API token when no flag gives them.
SERVICE_URL_ENV = "HEADCOUNT_SERVICE_URL"
TOKEN_ENV = "HEADCOUNT_TOKEN"

#: A command's handler: ``args.handler``, run on its own event loop by ``main``.
Handler = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]
#: What each command adds its parser to.
Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


class UsageError(HeadcountError):
    """The command line names something that does not exist or cannot be used."""


def store_parent() -> argparse.ArgumentParser:
    """``--store URL``."""
    store = argparse.ArgumentParser(add_help=False)
    store.add_argument(
        "--store",
        default=os.environ.get("HEADCOUNT_STORE", DEFAULT_URL),
        metavar="URL",
        help="event store: sqlite+aiosqlite:///FILE or postgresql+asyncpg://USER@HOST/DB"
        " (env HEADCOUNT_STORE; default %(default)s)",
    )
    return store


def topology_parent(what: str) -> argparse.ArgumentParser:
    """``--topology FILE``; ``what`` says what the command does with it (whether it becomes
    the store's current topology) and what it uses without it."""
    topology = argparse.ArgumentParser(add_help=False)
    topology.add_argument(
        "--topology",
        type=Path,
        default=os.environ.get("HEADCOUNT_TOPOLOGY"),
        metavar="FILE",
        help=f"topology TOML file (env HEADCOUNT_TOPOLOGY); {what}",
    )
    return topology


def snapshots_parent() -> argparse.ArgumentParser:
    """``--snapshot-every N``."""
    snapshots = argparse.ArgumentParser(add_help=False)
    snapshots.add_argument(
        "--snapshot-every",
        type=at_least_one,
        default=DEFAULT_SNAPSHOT_EVERY,
        metavar="N",
        help="snapshot each space every N events (default %(default)s)",
    )
    return snapshots


def embedded_parent() -> argparse.ArgumentParser:
    """The embedded broker's ``--mqtt-port N``, ``--broker-config FILE``, ``--dpu-auth DIR``,
    ``--insecure-open-broker`` and ``--mqtt-tls-cert FILE --mqtt-tls-key FILE`` (read those
    two with :func:`server_tls`)."""
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
    embedded.add_argument(
        "--dpu-auth",
        type=Path,
        default=os.environ.get("HEADCOUNT_DPU_AUTH"),
        metavar="DIR",
        help="DPU accounts made by 'headcount dpus credentials --out DIR': every client needs"
        " one, anonymous ones are refused, a DPU publishes only under its own id, and only"
        " the service's account may use the service's client id (env HEADCOUNT_DPU_AUTH)",
    )
    embedded.add_argument(
        "--insecure-open-broker",
        action="store_true",
        help="let the embedded broker listen beyond loopback (--host) without --dpu-auth:"
        " anyone who reaches it can then publish as any DPU",
    )
    embedded.add_argument(
        "--mqtt-tls-cert",
        type=Path,
        default=os.environ.get("HEADCOUNT_MQTT_TLS_CERT"),
        metavar="FILE",
        help="serve MQTT over TLS only, with this certificate chain (PEM; env"
        " HEADCOUNT_MQTT_TLS_CERT); needs --mqtt-tls-key. Clients connect with mqtts://",
    )
    embedded.add_argument(
        "--mqtt-tls-key",
        type=Path,
        default=os.environ.get("HEADCOUNT_MQTT_TLS_KEY"),
        metavar="FILE",
        help="the private key of --mqtt-tls-cert (PEM, unencrypted; env HEADCOUNT_MQTT_TLS_KEY)",
    )
    return embedded


def server_tls(args: argparse.Namespace) -> ServerTls | None:
    """The embedded broker's TLS from ``--mqtt-tls-cert`` and ``--mqtt-tls-key``: both or
    neither."""
    cert: Path | None = args.mqtt_tls_cert
    key: Path | None = args.mqtt_tls_key
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        given, missing = ("--mqtt-tls-cert", "--mqtt-tls-key")[:: 1 if cert else -1]
        raise UsageError(f"{given} needs {missing} too: TLS takes a certificate and its key")
    return ServerTls(cert, key)


async def choose_topology(
    args: argparse.Namespace, store: EventStore, *, beside: Path | None = None
) -> TopologyChoice:
    """The topology to work under: ``--topology``, else the store's current one, else a
    ``topology.toml`` beside ``beside``. Nothing is recorded here: see :func:`record`."""
    path: Path | None = args.topology
    if path is None:
        recorded = await recorded_topology(store)
        if recorded is not None:
            return recorded
        if beside is not None and (beside.parent / "topology.toml").is_file():
            path = beside.parent / "topology.toml"
            print(f"using topology {path} (found beside {beside.name})", file=sys.stderr)
        else:
            raise UsageError(
                "no topology: pass --topology FILE (or set HEADCOUNT_TOPOLOGY);"
                " the store has none recorded yet"
            )
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read topology file {path}: {e.strerror}") from e
    document = document_text(data, source=str(path))
    del data  # not held while the topology is read (as large as the document)
    return _choice(read_topology(document, source=str(path)), document, str(path))


async def recorded_topology(store: EventStore) -> TopologyChoice | None:
    """The store's current topology, if it records one."""
    current = await store.topologies.current()
    if current is None:
        return None
    document, origin = current
    source = f"{origin} (as recorded in the store)"
    return _choice(read_topology(document, source=source), None, origin)


def _choice(topology: Topology, document: str | None, origin: str) -> TopologyChoice:
    return TopologyChoice(topology, document, origin)


async def record(store: EventStore, choice: TopologyChoice) -> None:
    """Make a topology read from a file the store's current one."""
    if choice.document is not None:
        await store.topologies.record(choice.document, origin=choice.origin)


def shard_spec(text: str) -> Shard:
    """An argparse type: ``I/N`` as a :class:`Shard` (``--shard``)."""
    try:
        return Shard.parse(text)
    except ShardSpecError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def moment(flag: str, text: str) -> int:
    """``text``, the value of ``flag``, as a moment (ms since the epoch, UTC)."""
    try:
        return parse_iso(text)
    except InvalidTimestampError as e:
        raise UsageError(f"{flag}: {e}") from e
