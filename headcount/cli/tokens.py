"""``headcount tokens add NAME --scope read``: make an API token, print it once, keep its hash."""

from __future__ import annotations

import argparse
import os
import stat
import sys
from pathlib import Path

from headcount.cli.common import Commands
from headcount.http.tokens import Scope, add_token

#: The tokens file when neither --file nor the environment names one.
DEFAULT_FILE = "tokens.toml"


def add_command(commands: Commands) -> None:
    cmd = commands.add_parser(
        "tokens",
        help="API tokens for 'headcount serve --tokens FILE'",
        description="Manage the API's tokens file. The file holds each token's name, scope"
        " and SHA-256, never the token itself.",
    )
    actions = cmd.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = actions.add_parser(
        "add",
        help="make a new token, print it once and append its hash to the tokens file",
        description="Make a new random token, print it on stdout (the only time it is shown:"
        " keep it now), and append its name, scope and SHA-256 to the tokens file, created"
        " readable by its owner alone. A running service reads the file when it starts:"
        " restart it to accept the new token. Clients send it as 'Authorization: Bearer"
        " TOKEN'; headcount's own commands take it from --token or HEADCOUNT_TOKEN.",
    )
    add.add_argument("name", metavar="NAME", help="the token's name, shown in logs (e.g. grafana)")
    add.add_argument(
        "--scope",
        required=True,
        choices=[s.value for s in Scope],
        help="read: GET requests; write: every request (resets and other changes too)",
    )
    add.add_argument(
        "--file",
        type=Path,
        default=Path(os.environ.get("HEADCOUNT_TOKENS", DEFAULT_FILE)),
        metavar="FILE",
        help="the tokens file (env HEADCOUNT_TOKENS; default %(default)s)",
    )
    add.set_defaults(handler=run)


async def run(args: argparse.Namespace) -> int:
    token = add_token(args.file, args.name, Scope(args.scope))
    print(token)
    print(
        f"added token {args.name!r} (scope {args.scope}) to {args.file}; it is shown only"
        " this once. Restart 'headcount serve --tokens' to accept it.",
        file=sys.stderr,
    )
    mode = stat.S_IMODE(args.file.stat().st_mode)
    if mode & 0o077:
        print(
            f"warning: {args.file} is readable by others (mode {mode:o}); 'chmod 600' it",
            file=sys.stderr,
        )
    return 0
