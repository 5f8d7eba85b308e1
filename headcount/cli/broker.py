"""``headcount broker``: the embedded MQTT broker in a process of its own."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal

from headcount.cli.common import Commands, embedded_parent, server_tls
from headcount.errors import ConfigError, PortTakenError


def add_command(commands: Commands) -> None:
    cmd = commands.add_parser(
        "broker",
        parents=[embedded_parent()],
        help="run the embedded MQTT broker alone, for 'serve --broker' in another process",
        description="Run the embedded amqtt broker in a process of its own until SIGINT or"
        " SIGTERM. 'headcount serve --broker URL' then survives being killed without losing"
        " what the broker accepted, and on two cores ingests faster than with the broker"
        " inside (BENCHMARKS.md). The service user's password comes from --dpu-auth DIR,"
        " else HEADCOUNT_BROKER_PASSWORD; without either one is generated and the URL for"
        " 'serve --broker' is printed on stdout (with TLS, an mqtts:// URL trusting the"
        " certificate file, which must then name the host). Listening beyond loopback needs"
        " --dpu-auth (or --insecure-open-broker).",
    )
    cmd.add_argument(
        "--host",
        default=os.environ.get("HEADCOUNT_HOST", "127.0.0.1"),
        metavar="ADDR",
        help="address to listen on (env HEADCOUNT_HOST; default %(default)s)",
    )
    cmd.set_defaults(handler=run, log_level=logging.INFO)  # what it does while it runs


async def run(args: argparse.Namespace) -> int:
    # The broker's imports stay out of the other commands.
    from headcount.ingest.broker import (
        PASSWORD_ENV,
        BrokerError,
        EmbeddedBroker,
        exposure_problem,
    )

    tls = server_tls(args)
    if tls is not None:
        tls.check()
    try:
        broker = EmbeddedBroker(
            args.host,
            args.mqtt_port,
            config_file=args.broker_config,
            dpu_auth=args.dpu_auth,
            tls=tls,
        )
    except BrokerError as e:
        raise ConfigError(f"{e}; check --broker-config") from None
    problem = exposure_problem(
        broker.host, dpu_auth=args.dpu_auth, insecure_open=args.insecure_open_broker
    )
    if problem is not None:
        raise ConfigError(problem)
    try:
        async with broker:
            if args.dpu_auth is None and not os.environ.get(PASSWORD_ENV):
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
