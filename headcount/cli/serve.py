"""``headcount serve``: the service, MQTT ingest, per-space actors and the HTTP API."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from headcount.argtypes import at_least_one, non_negative, positive_seconds
from headcount.cli.common import (
    Commands,
    choose_topology,
    embedded_parent,
    server_tls,
    shard_spec,
    snapshots_parent,
    store_parent,
    topology_parent,
)
from headcount.domain.shards import Shard
from headcount.domain.topology import Topology, TopologyChoice
from headcount.eventstore.store import EventStore
from headcount.ingest import ratelimit

if TYPE_CHECKING:
    from headcount.ingest.pipeline import IngestSettings


def add_command(commands: Commands) -> None:
    cmd = commands.add_parser(
        "serve",
        parents=[
            store_parent(),
            topology_parent(
                "it becomes the store's current topology. Default: the store's current topology"
                " (with --demo, the seed topology)"
            ),
            snapshots_parent(),
            embedded_parent(),
        ],
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
        help="external MQTT broker, mqtt://user:pass@host:port, or mqtts://... for TLS"
        " (port 8883 by default; add ?ca=FILE to trust a private CA) (env HEADCOUNT_BROKER;"
        " default: start the embedded broker); without a user in it, --dpu-auth DIR gives"
        " the service's account",
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
        " (env HEADCOUNT_HOST; default %(default)s). Beyond loopback, the API needs --tokens"
        " or --insecure-open-api",
    )
    cmd.add_argument(
        "--tokens",
        type=Path,
        default=os.environ.get("HEADCOUNT_TOKENS"),
        metavar="FILE",
        help="API tokens file (TOML, made by 'headcount tokens add'; env HEADCOUNT_TOKENS):"
        " every route but /healthz then needs 'Authorization: Bearer TOKEN', scope read for"
        " GET, write for any other method. Default: no tokens, API on loopback only",
    )
    cmd.add_argument(
        "--open-metrics",
        action="store_true",
        help="with --tokens, serve /metrics without a token (for Prometheus scrapes)",
    )
    cmd.add_argument(
        "--insecure-open-api",
        action="store_true",
        help="serve the HTTP API without tokens on a --host beyond loopback: anyone who"
        " reaches the port reads every count",
    )
    cmd.add_argument(
        "--client-id",
        default=os.environ.get("HEADCOUNT_CLIENT_ID"),
        metavar="ID",
        help="MQTT client id of the service's persistent session (env HEADCOUNT_CLIENT_ID;"
        " default headcount, or headcount-shard-I with --shard I/N)",
    )
    cmd.add_argument(
        "--shard",
        type=shard_spec,
        default=os.environ.get("HEADCOUNT_SHARD", "0/1"),
        metavar="I/N",
        help="own shard I of N: run only the spaces whose id hashes to I, subscribe only to"
        " their DPUs' topics, publish their states and follow the other shards' (needs"
        " --broker). A second process with the same I/N is its standby and takes over when"
        " the owner stops (env HEADCOUNT_SHARD; default 0/1: every space)",
    )
    cmd.add_argument(
        "--dpu-rate",
        type=non_negative,
        default=ratelimit.DEFAULT_DPU_RATE,
        metavar="N",
        help="messages per second one DPU may send on average; beyond its burst, more are"
        " acknowledged, refused as rate_limited and counted per DPU in headcount_rate_limited"
        " (0: no limit; default %(default)s, far above any doorway)",
    )
    cmd.add_argument(
        "--dpu-burst",
        type=at_least_one,
        default=ratelimit.DEFAULT_DPU_BURST,
        metavar="N",
        help="messages one DPU may send at once above its rate, e.g. a backlog after an outage"
        " (default %(default)s)",
    )
    cmd.add_argument(
        "--quarantine-keep",
        type=non_negative,
        default=ratelimit.DEFAULT_QUARANTINE_KEEP,
        metavar="N",
        help=f"refused messages kept in quarantine per DPU and reason every"
        f" {ratelimit.DEFAULT_QUARANTINE_WINDOW_S:g} s; the rest are counted in"
        " headcount_quarantine_suppressed, not stored (default %(default)s)",
    )
    add_output_flags(cmd)
    cmd.set_defaults(handler=run, log_level=logging.INFO)  # what it does while it runs


def add_output_flags(cmd: argparse.ArgumentParser) -> None:
    """MQTT out, Home Assistant, and the config file's webhooks."""
    cmd.add_argument(
        "--mqtt-out",
        action="store_true",
        help="publish each space's state, retained, on headcount/spaces/ID/state (JSON count,"
        " ts, capacity, utilization), capacity alerts on headcount/spaces/ID/alerts, and"
        " online/offline on headcount/status (the last will), on the service's broker",
    )
    cmd.add_argument(
        "--publish-interval",
        type=positive_seconds,
        default=1.0,
        metavar="SECONDS",
        help="with --mqtt-out, at most one state per space this often; the last one is"
        " always sent (default %(default)s)",
    )
    cmd.add_argument(
        "--homeassistant",
        action="store_true",
        help="--mqtt-out plus retained Home Assistant MQTT discovery configs"
        " (homeassistant/sensor/headcount_ID/config): every space appears there by itself",
    )
    cmd.add_argument(
        "--config",
        type=Path,
        default=os.environ.get("HEADCOUNT_CONFIG"),
        metavar="FILE",
        help="service config file (TOML; env HEADCOUNT_CONFIG): [[webhooks]] with url, spaces"
        ' (a list, or "*") and secret, POSTed signed capacity alerts',
    )


def ingest_settings(args: argparse.Namespace) -> IngestSettings:
    """The ingest limits the flags set (``--dpu-rate 0``: no rate limit)."""
    from headcount.ingest.pipeline import IngestSettings

    return IngestSettings(
        dpu_rate=args.dpu_rate or None,
        dpu_burst=args.dpu_burst,
        quarantine_keep=args.quarantine_keep,
    )


async def run(args: argparse.Namespace) -> int:
    # The service's imports load only for the commands that use them.
    from headcount.service import Settings, demo_files, preflight, serve, shard_client_id

    shard: Shard = args.shard
    settings = Settings(
        store_url=args.store,
        broker_url=args.broker,
        host=args.host,
        http_port=args.http_port,
        mqtt_port=args.mqtt_port,
        broker_config=args.broker_config,
        mqtt_tls=server_tls(args),
        client_id=args.client_id or shard_client_id(shard),
        dpu_auth=args.dpu_auth,
        insecure_open_broker=args.insecure_open_broker,
        snapshot_every=args.snapshot_every,
        ingest=ingest_settings(args),
        demo=args.demo,
        tokens=args.tokens,
        open_metrics=args.open_metrics,
        insecure_open_api=args.insecure_open_api,
        mqtt_out=args.mqtt_out,
        publish_interval=args.publish_interval,
        homeassistant=args.homeassistant,
        config=args.config,
        shard=shard,
    )
    preflight(settings)  # configuration problems are reported before the store is touched
    if args.demo and args.topology is None:
        document, _ = demo_files()
        topology = Topology.from_toml(document, source="seed topology")
        return await serve(settings, TopologyChoice(topology, document, "seed topology"))
    async with await EventStore.open(args.store) as store:
        choice = await choose_topology(args, store)
    return await serve(settings, choice)
