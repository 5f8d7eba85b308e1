"""The running service, assembled: store, topology, actors, broker, ingest and the HTTP API.

Each long-lived resource attaches to the aiohttp application through one ``cleanup_ctx``
generator, so they start in order and stop in reverse: ingest stops first, then the embedded
broker, then the actors drain their mailboxes and write final snapshots, then the store closes.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from aiohttp import web
from sqlalchemy.engine import make_url

from headcount.actors import ActorSystem
from headcount.domain.topology import Topology
from headcount.errors import PortTakenError
from headcount.eventstore.engine import DEFAULT_URL
from headcount.eventstore.lease import lease
from headcount.eventstore.store import EventStore
from headcount.history import DEFAULT_SNAPSHOT_EVERY, History
from headcount.http.keys import ACTORS, DPUS, HISTORY, METRICS, STORE
from headcount.http.routes import add_routes
from headcount.http.server import make_runner
from headcount.importer.load import import_csv
from headcount.ingest import wire
from headcount.ingest.broker import BrokerError, EmbeddedBroker
from headcount.ingest.dpus import DpuRegistry
from headcount.ingest.mqtt import Subscriber, parse_broker_url
from headcount.ingest.pipeline import Ingest, IngestSettings
from headcount.metrics import Metrics

log = logging.getLogger(__name__)

BROKER_URL = web.AppKey("broker_url", str)
#: Set when a background part of the service (ingest, the actors) failed: serve stops.
FAILED = web.AppKey("failed", asyncio.Event)

CleanupContext = Callable[[web.Application], AsyncIterator[None]]


def _watch(app: web.Application, task: asyncio.Task[None]) -> None:
    """A background task that ends on its own (not cancelled) has failed: stop the service."""

    def done(task: asyncio.Task[None]) -> None:
        if not task.cancelled():
            error = task.exception()
            log.error("%s stopped: %r; shutting down", task.get_name(), error, exc_info=error)
            app[FAILED].set()

    task.add_done_callback(done)


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything ``headcount serve`` is configured with. ``broker_url`` ``None`` starts the
    embedded broker on ``mqtt_host:mqtt_port``; ``demo`` imports the seed data into an empty
    store."""

    topology: Topology
    topology_document: str | None = None
    topology_origin: str = "<topology>"
    store_url: str = DEFAULT_URL
    broker_url: str | None = None
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = 1883
    broker_config: Path | None = None
    client_id: str = "headcount"
    snapshot_every: int = DEFAULT_SNAPSHOT_EVERY
    ingest: IngestSettings = field(default_factory=IngestSettings)
    demo: bool = False


def demo_files() -> tuple[str, Path]:
    """The seed topology's text and the seed CSV's path, shipped inside the package."""
    folder = resources.files("headcount") / "demo"
    topology = (folder / "topology.toml").read_text(encoding="utf-8")
    return topology, Path(str(folder / "dpu_data.csv"))


def build_app(settings: Settings) -> web.Application:
    """The aiohttp application with every resource attached (started when the app starts)."""
    app = web.Application()
    app[FAILED] = asyncio.Event()
    app[METRICS] = Metrics()
    app[DPUS] = DpuRegistry()
    app.cleanup_ctx.append(_store(settings))
    app.cleanup_ctx.append(_actors(settings))
    app.cleanup_ctx.append(_ingest(settings))
    add_routes(app)
    return app


def _store(settings: Settings) -> CleanupContext:
    async def attach(app: web.Application) -> AsyncIterator[None]:
        async with (
            await EventStore.open(settings.store_url) as store,
            lease(store, exclusive=False, holder="headcount serve"),
        ):
            if settings.topology_document is not None:
                await store.record_topology(
                    settings.topology_document, origin=settings.topology_origin
                )
            if settings.demo and await store.count_traversals() == 0:
                _, csv = demo_files()
                summary = await import_csv(store, settings.topology, csv)
                log.info("demo: imported %d seed events from %s", summary.stored, csv.name)
            app[STORE] = store
            yield
            log.info("store closed")

    return attach


def _actors(settings: Settings) -> CleanupContext:
    async def attach(app: web.Application) -> AsyncIterator[None]:
        history = History(app[STORE], settings.topology, snapshot_every=settings.snapshot_every)
        system = ActorSystem(history, on_late=app[METRICS].late.inc)
        app[HISTORY] = history
        async with system.running() as running:
            app[ACTORS] = system
            if running.task is not None:
                _watch(app, running.task)
            yield
            log.info("actors stopping: draining mailboxes and writing snapshots")

    return attach


def _ingest(settings: Settings) -> CleanupContext:
    async def attach(app: web.Application) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            url = settings.broker_url
            if url is None:
                broker = await stack.enter_async_context(
                    EmbeddedBroker(
                        settings.mqtt_host, settings.mqtt_port, config_file=settings.broker_config
                    )
                )
                url = broker.url
                log.info("embedded MQTT broker on %s:%d", broker.host, broker.port)
            subscriber = await stack.enter_async_context(
                Subscriber(
                    parse_broker_url(url),
                    client_id=settings.client_id,
                    topics=[wire.TRAVERSALS_FILTER, wire.STATUS_FILTER],
                )
            )
            ingest = Ingest(
                subscriber.messages(),
                subscriber.ack,
                store=app[STORE],
                actors=app[ACTORS],
                dpus=app[DPUS],
                metrics=app[METRICS],
                settings=settings.ingest,
            )
            task = asyncio.create_task(ingest.run(), name="ingest")
            _watch(app, task)
            app[BROKER_URL] = url
            try:
                yield
            finally:
                task.cancel()
                await asyncio.wait([task])
                log.info("ingest stopped")

    return attach


async def serve(
    args: argparse.Namespace, topology: Topology, document: str | None, origin: str
) -> int:
    """Run until SIGINT/SIGTERM (exit 0) or until a background part fails (exit 1)."""
    settings = Settings(
        topology=topology,
        topology_document=document,
        topology_origin=origin,
        store_url=args.store,
        broker_url=args.broker,
        mqtt_host=args.host,
        mqtt_port=args.mqtt_port,
        broker_config=args.broker_config,
        client_id=args.client_id,
        snapshot_every=args.snapshot_every,
        demo=args.demo,
    )
    # Fail before anything starts when a port is taken (the usual case: 1883 held by a broker).
    _check_port(args.host, args.http_port, "HTTP", "--http-port")
    if settings.broker_url is None:
        _check_port(args.host, args.mqtt_port, "the embedded MQTT broker", "--mqtt-port")
    app = build_app(settings)
    runner = make_runner(app, handle_signals=False, access_log=None)
    try:
        await runner.setup()
        site = web.TCPSite(runner, args.host, args.http_port)
        await site.start()
    except BaseException as e:
        await runner.cleanup()  # what did start stops again, in reverse order
        if isinstance(e, BrokerError):
            raise PortTakenError(f"{e}; choose another port with --mqtt-port") from e
        if isinstance(e, OSError):
            raise PortTakenError(
                f"cannot listen for HTTP on {args.host}:{args.http_port} ({e.strerror});"
                " choose another port with --http-port"
            ) from e
        raise
    log.info(
        "serving http://%s:%d spaces=%d store=%s broker=%s",
        args.host,
        args.http_port,
        len(topology.spaces),
        _safe_url(settings.store_url),
        "embedded" if settings.broker_url is None else _safe_url(settings.broker_url),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    stopping = asyncio.create_task(stop.wait(), name="wait:signal")
    failing = asyncio.create_task(app[FAILED].wait(), name="wait:failure")
    await asyncio.wait([stopping, failing], return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    failing.cancel()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.remove_signal_handler(sig)
    log.info("stopping")
    await runner.cleanup()
    log.info("stopped")
    return 1 if app[FAILED].is_set() else 0


def _check_port(host: str, port: int, what: str, flag: str) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as e:
            raise PortTakenError(
                f"port {port} on {host} for {what} is taken ({e.strerror});"
                f" choose another with {flag}"
            ) from None


def _safe_url(url: str) -> str:
    """A URL fit for a log line: the password hidden."""
    return make_url(url).render_as_string(hide_password=True) if "://" in url else url
