"""``headcount dpus``: the DPUs' side; ``dpus credentials`` makes their broker accounts."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from headcount.cli.common import Commands, choose_topology, store_parent, topology_parent
from headcount.eventstore.store import EventStore


def add_command(commands: Commands) -> None:
    cmd = commands.add_parser(
        "dpus",
        help="DPU accounts on the broker",
        description="Manage what the DPUs need to connect to the broker.",
    )
    actions = cmd.add_subparsers(dest="dpus_command", required=True, metavar="ACTION")
    credentials = actions.add_parser(
        "credentials",
        parents=[
            store_parent(),
            topology_parent("its DPUs get accounts. Default: the store's current topology"),
        ],
        help="make one broker account per DPU, and the service's",
        description="Give every DPU of the topology a random password, and the service its"
        " account 'headcount'. New passwords are printed once on stdout, one"
        " 'name<TAB>password' per line: give each DPU its own; they are kept nowhere else."
        " DIR keeps only hashes: amqtt.passwd and amqtt-acl.yaml for 'serve --dpu-auth DIR' and"
        " 'headcount broker --dpu-auth DIR'; mosquitto-dynsec.json (Mosquitto 2's dynamic"
        " security plugin), mosquitto.passwd and the lines to add to mosquitto.conf for"
        " Mosquitto 2; and service.password (mode 0600), which"
        " the service reads. Run again after adding DPUs: existing accounts keep their"
        " passwords and only the new ones are printed.",
    )
    credentials.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="DIR",
        help="directory for the broker files (made if missing; existing accounts are kept)",
    )
    credentials.add_argument(
        "--rotate",
        action="append",
        default=[],
        metavar="DPU_ID",
        help="give this DPU (or 'headcount', the service) a new password; repeatable",
    )
    credentials.set_defaults(handler=run_credentials)


async def run_credentials(args: argparse.Namespace) -> int:
    from headcount.ingest.credentials import issue

    async with await EventStore.open(args.store) as store:
        choice = await choose_topology(args, store)
    dpu_ids = choice.topology.dpu_ids()
    made = issue(dpu_ids, args.out, rotate=args.rotate)
    for name, password in made.items():
        print(f"{name}\t{password}")
    kept = len(dpu_ids) + 1 - len(made)
    print(
        f"{len(made)} password(s) made, {kept} account(s) kept; broker files in {args.out}",
        file=sys.stderr,
    )
    return 0
