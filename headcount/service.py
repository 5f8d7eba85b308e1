"""The running service, assembled: store, topology, actors, broker, ingest and the HTTP API.

:func:`serve` checks the configuration before it touches anything (:func:`preflight`), then
opens each resource in order in one exit stack and runs the long-lived parts (the actors,
ingest) as one supervision tree, a :class:`asyncio.TaskGroup`: when any part fails, the others
are cancelled and the service stops, exit 1. On SIGINT/SIGTERM it stops cleanly in order:
ingest first (nothing more is acknowledged), then the actors drain their mailboxes and write
final snapshots, then the HTTP API, the broker and the store close.

With ``--shard I/N`` the process first takes the shard's lock, or waits for it as the shard's
standby with the HTTP API open (see README, "Several processes"). Longer than 400 lines: the
assembly of the service reads best in one place.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web
from sqlalchemy.engine import make_url

from headcount.actors import ActorSystem, ChangeFeed, LiveCounts, ResetTaker
from headcount.domain.shards import ONE_SHARD, Shard, ShardStatus, shard_dpus
from headcount.domain.topology import TopologyChoice
from headcount.errors import ConfigError, PortTakenError
from headcount.eventstore.engine import DEFAULT_URL
from headcount.eventstore.lease import ShardLease, lease, shard_lease
from headcount.eventstore.partitions import PartitionUpkeep
from headcount.eventstore.store import EventStore
from headcount.history import DEFAULT_SNAPSHOT_EVERY, History
from headcount.history.dpu_health import HealthWatch
from headcount.http.auth import AUTH, OPEN_ALWAYS, Auth
from headcount.http.keys import (
    ACTORS,
    CHANGES,
    DPUS,
    HISTORY,
    INGEST,
    METRICS,
    RESETS,
    SHARD,
    STORE,
)
from headcount.http.limits import new_app
from headcount.http.routes import add_routes
from headcount.http.server import make_runner
from headcount.http.tokens import Tokens
from headcount.importer.load import import_csv
from headcount.ingest import credentials, wire
from headcount.ingest.broker import BrokerError, EmbeddedBroker, exposure_problem, is_loopback
from headcount.ingest.dpus import DpuRegistry
from headcount.ingest.health import IngestHealth
from headcount.ingest.mqtt import (
    BrokerAddress,
    BrokerUrlError,
    Subscriber,
    parse_broker_url,
    tls_context,
)
from headcount.ingest.pipeline import Ingest, IngestSettings
from headcount.ingest.tls import ServerTls
from headcount.metrics import Metrics
from headcount.outputs.config import ServiceConfig, load_config
from headcount.outputs.follow import Outputs
from headcount.outputs.mqtt import DEFAULT_PUBLISH_INTERVAL_S, MqttOut
from headcount.outputs.owners import FollowedStates, ShardLive, StateFollower
from headcount.outputs.payloads import Topics
from headcount.outputs.webhooks import Webhooks

__all__ = [
    "Part",
    "ServiceFailedError",
    "Settings",
    "build_app",
    "demo_files",
    "preflight",
    "run_parts",
    "serve",
    "shard_client_id",
    "shard_topics",
]

log = logging.getLogger(__name__)


class ServiceFailedError(Exception):
    """A part of the running service failed; it was stopped. The part's error is
    ``__cause__``."""


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything ``headcount serve`` is configured with, but the topology. ``broker_url``
    ``None`` starts the embedded broker on ``host:mqtt_port`` (over TLS with ``mqtt_tls``);
    ``demo`` imports the seed data into an empty store."""

    store_url: str = DEFAULT_URL
    broker_url: str | None = None
    host: str = "127.0.0.1"
    http_port: int = 8080
    mqtt_port: int = 1883
    broker_config: Path | None = None
    mqtt_tls: ServerTls | None = None
    client_id: str = "headcount"
    #: ``headcount dpus credentials`` output: the embedded broker's accounts and ACL, and
    #: the service's own account (for an external broker too, when its URL names no user).
    dpu_auth: Path | None = None
    insecure_open_broker: bool = False
    snapshot_every: int = DEFAULT_SNAPSHOT_EVERY
    ingest: IngestSettings = field(default_factory=IngestSettings)
    demo: bool = False
    #: The API's tokens file; ``None``: no token needed, and the API listens on loopback only
    #: unless ``insecure_open_api``.
    tokens: Path | None = None
    #: ``/metrics`` without a token (for Prometheus scrapes) when ``tokens`` is set.
    open_metrics: bool = False
    #: Serve the API without tokens on an address beyond loopback: a decision, not a default.
    insecure_open_api: bool = False
    #: Publish each space's state (retained) and capacity alerts on the broker.
    mqtt_out: bool = False
    #: At most one state per space this often (the last one always sent).
    publish_interval: float = DEFAULT_PUBLISH_INTERVAL_S
    #: Home Assistant MQTT discovery configs (implies ``mqtt_out``).
    homeassistant: bool = False
    #: The service config file (TOML: ``[[webhooks]]``).
    config: Path | None = None
    #: The shard this process owns (or stands by for): the spaces whose id hashes to its index.
    #: With more than one, the process publishes its spaces' states as ``mqtt_out`` does and
    #: follows the other shards' (``outputs.owners``).
    shard: Shard = ONE_SHARD


def shard_client_id(shard: Shard) -> str:
    """The client id of a shard's persistent MQTT session when ``--client-id`` gives none:
    ``headcount`` for the one shard of an unsharded deployment, else ``headcount-shard-I``."""
    return "headcount" if not shard.sharded else f"headcount-shard-{shard.index}"


def demo_files() -> tuple[str, Path]:
    """The seed topology's text and the seed CSV's path, shipped inside the package."""
    folder = resources.files("headcount") / "demo"
    topology = (folder / "topology.toml").read_text(encoding="utf-8")
    return topology, Path(str(folder / "dpu_data.csv"))


def preflight(settings: Settings) -> None:
    """Check the configuration before anything is opened: each problem raises
    :class:`ConfigError` naming its own cause and the flag to change."""
    if settings.shard.sharded and settings.broker_url is None:
        raise ConfigError(
            f"--shard {settings.shard} needs --broker URL: the shards share one external broker"
            " (or cluster), which an embedded broker, one per process, cannot be"
        )
    if settings.broker_url is not None:
        try:
            tls_context(parse_broker_url(settings.broker_url))  # reads a ?ca= file
        except BrokerUrlError as e:
            raise ConfigError(f"{e}; check --broker") from None
        if settings.dpu_auth is not None:
            credentials.load(settings.dpu_auth)  # ConfigError naming --dpu-auth
    else:
        if settings.mqtt_tls is not None:
            settings.mqtt_tls.check()
        try:
            EmbeddedBroker(
                settings.host,
                settings.mqtt_port,
                config_file=settings.broker_config,
                dpu_auth=settings.dpu_auth,
            )  # reads and checks the config file and the credentials; starts nothing
        except BrokerError as e:
            raise ConfigError(f"{e}; check --broker-config") from None
        problem = exposure_problem(
            settings.host,
            dpu_auth=settings.dpu_auth,
            insecure_open=settings.insecure_open_broker,
        )
        if problem is not None:
            raise ConfigError(problem)
    if settings.tokens is not None:
        try:
            Tokens.load(settings.tokens)  # every problem of the file, before anything opens
        except ConfigError as e:
            raise ConfigError(f"--tokens: {e}") from None
    elif not settings.insecure_open_api and not is_loopback(settings.host):
        raise ConfigError(
            f"--host {settings.host} would open the HTTP API beyond this machine without tokens:"
            " give --tokens FILE (make one with 'headcount tokens add NAME --scope read'), or"
            " --insecure-open-api to serve it open on purpose"
        )
    if settings.config is not None:
        load_config(settings.config)  # every problem of the file, naming --config
    if not settings.publish_interval > 0:
        raise ConfigError(f"--publish-interval {settings.publish_interval} must be above 0 s")
    _check_port(settings.host, settings.http_port, "HTTP", "--http-port")
    if settings.broker_url is None:
        _check_port(settings.host, settings.mqtt_port, "the embedded MQTT broker", "--mqtt-port")


async def serve(
    settings: Settings, choice: TopologyChoice, *, stop: asyncio.Event | None = None
) -> int:
    """Run until SIGINT/SIGTERM or ``stop`` (exit 0) or until a part fails (exit 1)."""
    preflight(settings)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await _run(settings, choice, stop)
    except ServiceFailedError as e:
        log.error("%s; stopped", e)
        return 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return 0


async def _run(settings: Settings, choice: TopologyChoice, stop: asyncio.Event) -> None:
    async with AsyncExitStack() as stack:
        store = await stack.enter_async_context(await EventStore.open(settings.store_url))
        await stack.enter_async_context(lease(store, exclusive=False, holder="headcount serve"))
        await _prepare_store(settings, choice, store)
        history = History(store, choice.topology, snapshot_every=settings.snapshot_every)
        metrics = Metrics()
        shard = settings.shard
        owned = shard.spaces(choice.topology) if shard.sharded else None
        system = ActorSystem(history, space_ids=owned, on_late=metrics.late.inc)
        if settings.broker_url is not None:
            address = _broker_address(settings.broker_url, settings.dpu_auth)
        else:
            address = await _start_broker(settings, stack)
        followed = None
        if shard.sharded:
            followed = FollowedStates(choice.topology)
            follower = StateFollower(address, followed, client_id=_follower_id(settings))
            await _background(stack, follower, "follow-states")
        live = ShardLive(system, shard, followed)
        dpus = DpuRegistry()
        health = IngestHealth(settings.ingest.stall_after_s)
        auth = _auth(settings)
        app = build_app(
            store=store,
            history=history,
            actors=live,
            dpus=dpus,
            metrics=metrics,
            ingest=health,
            auth=auth,
            resets=live,
            changes=system.changes,
            shard=live.status,
        )
        claimed = await _claim_shard(store, settings, app, stack, stop)
        if claimed is None:
            return  # stopped while standing by
        held, serving = claimed
        live.take()
        await system.recover()
        subscriber = await stack.enter_async_context(
            Subscriber(address, client_id=settings.client_id, topics=shard_topics(choice, shard))
        )
        ingest = Ingest(
            subscriber.messages(),
            subscriber.ack,
            store=store,
            actors=system,
            dpus=dpus,
            metrics=metrics,
            settings=replace(settings.ingest, route_duplicates=shard.sharded),
            health=health,
        )
        if not serving:
            await _start_http(app, settings, stack)
        log.info(
            "serving http://%s:%d spaces=%d%s store=%s broker=%s api_tokens=%s",
            settings.host,
            settings.http_port,
            len(system.actors),
            f" (shard {shard}, owner)" if shard.sharded else "",
            _safe_url(settings.store_url),
            "embedded" if settings.broker_url is None else _safe_url(settings.broker_url),
            "off" if auth is None else auth.summary(),
        )
        outputs = _outputs(settings, choice, system, address, metrics)
        watch = HealthWatch(store, choice.topology, metrics)
        # What start-up built (modules, topology, recovered state) lives as long as the
        # process: out of the collector's full passes, which ingest's short-lived events set
        # off every few tens of thousands and which would walk it all again each time.
        gc.collect()
        gc.freeze()
        _return_free_memory()
        upkeep = PartitionUpkeep(store.engine)  # PostgreSQL: this month and the next made
        background: list[tuple[str, Part]] = [
            ("dpu-health", watch),
            ("partitions", upkeep),
            ("shard-lease", _Watched(held)),
        ]
        await run_parts(system, ingest, stop, outputs=outputs, background=background)


def shard_topics(choice: TopologyChoice, shard: Shard) -> list[str]:
    """What a shard subscribes to: everything under ``dpus/`` when it is the only one, else
    the traversal and status topics of the DPUs its spaces ever had (``shard_dpus``)."""
    if not shard.sharded:
        return [wire.SUBSCRIPTION]
    topics = []
    for dpu_id in shard_dpus(choice.topology, shard):
        try:
            topics += [wire.traversals_topic(dpu_id), wire.status_topic(dpu_id)]
        except wire.WireError as e:  # an id that cannot be a topic level: nothing can come
            log.warning("DPU %r has no topic: %s", dpu_id, e)
    if not topics:
        log.warning("shard %s owns no space with a DPU: it subscribes to nothing", shard)
        topics = [wire.traversals_topic("headcount-shard-with-no-dpus")]
    return topics


async def _claim_shard(
    store: EventStore,
    settings: Settings,
    app: web.Application,
    stack: AsyncExitStack,
    stop: asyncio.Event,
) -> tuple[ShardLease, bool] | None:
    """Hold the shard's lock (until ``stack`` closes): at once when it is free, the usual
    start, the HTTP API then opening once the spaces are recovered; else as a standby, the
    HTTP API open meanwhile. Returns the lock and whether the API is open; ``None`` when
    ``stop`` came first."""
    shard = settings.shard
    holding = shard_lease(store, shard, wait=True, holder="headcount serve")
    claim = asyncio.ensure_future(holding.__aenter__())
    await asyncio.wait([claim], timeout=0.05)  # a free shard: its owner at once
    serving = False
    if not claim.done():
        await _start_http(app, settings, stack)
        serving = True
        log.info("shard %s: standby, waiting for its owner to stop", shard)
        await _stand_by(claim, stop)
        if claim.cancelled():
            return None
    stack.push_async_exit(holding)
    held = claim.result()
    return None if stop.is_set() else (held, serving)


async def _stand_by(claim: asyncio.Future[ShardLease], stop: asyncio.Event) -> None:
    """Wait for the shard's lock (``claim``) or for ``stop``, whichever comes first."""
    stopping: asyncio.Future[bool] = asyncio.ensure_future(stop.wait())
    waits: list[asyncio.Future[Any]] = [claim, stopping]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    if not claim.done():
        claim.cancel()
        await asyncio.wait([claim])


async def _background(stack: AsyncExitStack, part: Part, name: str) -> None:
    """Run ``part`` until the service stops (it is cancelled then); its failure is logged."""
    task = asyncio.create_task(part.run(), name=name)

    async def stop_it() -> None:
        task.cancel()
        await asyncio.wait([task])
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed: %r", name, task.exception())

    stack.push_async_callback(stop_it)


def _follower_id(settings: Settings) -> str:
    """The follower's client id: the process's own (a clean session, never shared)."""
    return f"{settings.client_id}-follow-{socket.gethostname()}-{os.getpid()}"


class _Watched:
    """The shard's lock as a part of the service: it fails when another process took it."""

    def __init__(self, held: ShardLease) -> None:
        self._held = held

    async def run(self) -> None:
        await self._held.watch()


class Part(Protocol):
    """A long-lived part of the service (ingest): runs until cancelled, or fails."""

    async def run(self) -> None: ...


async def run_parts(
    system: ActorSystem,
    ingest: Part,
    stop: asyncio.Event,
    *,
    outputs: Part | None = None,
    background: Sequence[tuple[str, Part]] = (),
) -> None:
    """The service's parts as one tree: a part that fails stops them all and raises
    :class:`ServiceFailedError`; ``stop`` stops them in order (ingest and the ``background``
    parts, named, then the actors once their mailboxes are drained, then the outputs, which
    send what they hold, then the actors' final snapshots)."""
    try:
        async with asyncio.TaskGroup() as parts:
            actors = parts.create_task(system.run(), name="actors")
            ingesting = parts.create_task(ingest.run(), name="ingest")
            telling = None if outputs is None else parts.create_task(outputs.run(), name="outputs")
            others = [parts.create_task(part.run(), name=name) for name, part in background]
            await stop.wait()
            log.info("stopping: ingest first, then the actors drain their mailboxes")
            for task in [ingesting, *others]:
                task.cancel()
            await asyncio.wait([ingesting, *others])
            await system.drain()
            if telling is not None:
                await asyncio.sleep(0)  # the outputs take the last changes off the feed
                telling.cancel()
                await asyncio.wait([telling])
            actors.cancel()
    except* Exception as failed:
        error = failed.exceptions[0]
        raise ServiceFailedError(f"a part of the service failed: {error!r}") from error
    await system.write_snapshots()
    log.info("actors stopped, snapshots written")


def build_app(
    *,
    store: EventStore,
    history: History,
    actors: LiveCounts,
    dpus: DpuRegistry,
    metrics: Metrics,
    ingest: IngestHealth,
    auth: Auth | None = None,
    resets: ResetTaker | None = None,
    changes: ChangeFeed | None = None,
    shard: Callable[[], ShardStatus] | None = None,
) -> web.Application:
    """The HTTP API over the service's parts; with ``auth``, tokens are needed. ``actors``
    answers the live counts, ``resets`` takes resets and ``changes`` feeds the live push
    (an :class:`ActorSystem` given as ``actors`` does all three); ``shard`` tells
    ``/healthz`` what this process is to its shard."""
    app = new_app()
    if auth is not None:
        app[AUTH] = auth
    app[STORE] = store
    app[HISTORY] = history
    app[ACTORS] = actors
    if isinstance(actors, ActorSystem):
        resets = resets or actors
        changes = changes or actors.changes
    if resets is not None:
        app[RESETS] = resets
    if changes is not None:
        app[CHANGES] = changes
    if shard is not None:
        app[SHARD] = shard
    app[DPUS] = dpus
    app[METRICS] = metrics
    app[INGEST] = ingest
    add_routes(app)
    return app


def _outputs(
    settings: Settings,
    choice: TopologyChoice,
    system: ActorSystem,
    address: BrokerAddress,
    metrics: Metrics,
) -> Outputs | None:
    """MQTT out and the capacity alerts' webhooks, as the settings ask; ``None``: neither."""
    config = ServiceConfig() if settings.config is None else load_config(settings.config)
    config.check_spaces(choice.topology.spaces, f"--config {settings.config}")
    mqtt = None
    if settings.mqtt_out or settings.homeassistant or settings.shard.sharded:
        sharded = settings.shard.sharded
        mqtt = MqttOut(
            address,
            choice.topology,
            client_id=f"{settings.client_id}-out",
            interval_s=settings.publish_interval,
            homeassistant=settings.homeassistant,
            topics=Topics(shard=settings.shard.index) if sharded else None,
            space_ids=list(system.actors) if sharded else None,
        )
    webhooks = Webhooks(config.webhooks, metrics=metrics) if config.webhooks else None
    if mqtt is None and webhooks is None:
        return None
    log.info(
        "outputs: mqtt=%s homeassistant=%s webhooks=%d",
        "on" if mqtt is not None else "off",
        "on" if settings.homeassistant else "off",
        len(config.webhooks),
    )
    return Outputs(system, system.changes, metrics=metrics, mqtt=mqtt, webhooks=webhooks)


def _auth(settings: Settings) -> Auth | None:
    if settings.tokens is None:
        return None
    open_paths = OPEN_ALWAYS | ({"/metrics"} if settings.open_metrics else set())
    return Auth(Tokens.load(settings.tokens), frozenset(open_paths))


async def _prepare_store(settings: Settings, choice: TopologyChoice, store: EventStore) -> None:
    if choice.document is not None:
        await store.topologies.record(choice.document, origin=choice.origin)
        choice.document = None  # recorded: not held for as long as the service runs
    if settings.demo and await store.log.count_traversals() == 0:
        _, csv = demo_files()
        summary = await import_csv(store, choice.topology, csv)
        log.info("demo: imported %d seed events from %s", summary.stored, csv.name)


def _broker_address(url: str, dpu_auth: Path | None) -> BrokerAddress:
    """The broker to subscribe at; a URL without a user takes the service's account from
    ``--dpu-auth``."""
    address = parse_broker_url(url)
    if dpu_auth is None or address.username is not None:
        return address
    password = credentials.load(dpu_auth).service_password
    return replace(address, username=credentials.SERVICE_USERNAME, password=password)


async def _start_broker(settings: Settings, stack: AsyncExitStack) -> BrokerAddress:
    broker = EmbeddedBroker(
        settings.host,
        settings.mqtt_port,
        config_file=settings.broker_config,
        dpu_auth=settings.dpu_auth,
        tls=settings.mqtt_tls,
    )
    try:
        await stack.enter_async_context(broker)
    except BrokerError as e:
        raise PortTakenError(f"{e}; choose another port with --mqtt-port") from e
    log.info(
        "embedded MQTT broker on %s:%d%s",
        broker.host,
        broker.port,
        " (TLS)" if settings.mqtt_tls else "",
    )
    if settings.dpu_auth is not None:
        warning = storm_warning(credentials.load(settings.dpu_auth).dpus)
        if warning is not None:
            log.warning("%s", warning)
    return broker.service_address()


async def _start_http(app: web.Application, settings: Settings, stack: AsyncExitStack) -> None:
    runner = make_runner(app, handle_signals=False, access_log=None)
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    try:
        await web.TCPSite(runner, settings.host, settings.http_port).start()
    except OSError as e:
        raise PortTakenError(
            f"cannot listen for HTTP on {settings.host}:{settings.http_port} ({e.strerror});"
            " choose another port with --http-port"
        ) from e


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


def _return_free_memory() -> None:
    """Give the C allocator's free memory back to the system once start-up is over: reading
    the topology and recovering leave much of it free (40 MiB of 530 at 100,000 spaces), which
    glibc keeps for the process unless asked. Elsewhere (another C library): nothing to do."""
    if sys.platform != "linux":
        return
    try:
        libc = ctypes.CDLL(None)
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc
        return
    trim(0)


#: From this many DPU accounts on, the embedded broker's logins are worth a warning.
EMBEDDED_AUTH_DPUS = 200


def storm_warning(dpus: int) -> str | None:
    """What to tell an operator whose DPUs log in to the broker inside the service: a login
    is checked with Argon2 and set up on this process's loop, and when many reconnect at once
    (after a restart of the service or of the network) the HTTP API slows for the minutes that
    takes (p99 0.4 s for 1,000 DPUs, BENCHMARKS.md "Connect storm"); counting goes on. A
    broker of its own keeps that off the service."""
    if dpus < EMBEDDED_AUTH_DPUS:
        return None
    return (
        f"{dpus:,} DPU accounts log in to the broker inside this service: when they reconnect"
        " at once (after a restart of the service or of the network), each first login's"
        " Argon2 check and set-up run in this process, and the HTTP API slows for the minutes"
        " that takes (p99 about 0.4 s for 1,000 DPUs; counting goes on). Run the broker in a"
        " process of its own: 'headcount broker --dpu-auth DIR', and 'headcount serve --broker"
        " mqtt://...' with the same --dpu-auth"
    )
