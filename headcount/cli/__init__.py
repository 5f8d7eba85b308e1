"""``headcount``: the command line. ``headcount --help`` lists the commands.

One module per command, each adding its parser with ``add_command`` and handling it with
``run``; what they share is in :mod:`headcount.cli.common`. ``simulate`` comes from
:mod:`headcount.sim.command`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

from headcount.cli import (
    broker,
    count,
    dpus,
    import_,
    migrate,
    partitions,
    replay,
    reset,
    serve,
    tokens,
)
from headcount.cli.common import EXIT_FAILED, EXIT_USAGE, Handler, UsageError
from headcount.errors import ConfigError, HeadcountError, InvalidTimestampError, UnknownSpaceError
from headcount.sim.command import add_command as add_simulate

__all__ = ["build_parser", "main"]

#: Errors in what the command was given (exit 2): a flag, a file, a space, a moment, a port
#: (``PortTakenError`` is a ``ConfigError``). Every other ``HeadcountError`` exits 1.
_USAGE_ERRORS = (UsageError, ConfigError, UnknownSpaceError, InvalidTimestampError)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``headcount`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _set_up_logging(args)
    handler: Handler = args.handler
    try:
        return asyncio.run(handler(args))
    except _USAGE_ERRORS as e:
        _report(args.command, str(e))
        return EXIT_USAGE
    except HeadcountError as e:
        _report(args.command, str(e))
        return EXIT_FAILED
    except KeyboardInterrupt:
        _report(args.command, "interrupted")
        return 130


def _report(command: str, message: str) -> None:
    """``headcount COMMAND: message`` on stderr. Some messages name the command already (the
    store's lease names the holder it refused): the prefix is not said twice."""
    prefix = f"headcount {command}: "
    print(message if message.startswith(prefix) else prefix + message, file=sys.stderr)


def _version() -> str:
    """This installation's version, from the package metadata."""
    try:
        return version("headcount")
    except PackageNotFoundError:  # imported from a source tree that was never installed
        return "(version unknown: not installed)"


#: Libraries that log a line per connection or migration: warnings only, unless ``-v``.
_NOISY = ("amqtt", "transitions", "alembic")


def _set_up_logging(args: argparse.Namespace) -> None:
    """Log at the command's level: ``args.log_level`` (INFO for the long-running ``serve``
    and ``broker``; WARNING when a command sets none), DEBUG with ``-v``."""
    level = logging.DEBUG if args.verbose else getattr(args, "log_level", logging.WARNING)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger().setLevel(level)  # also when a handler was there before
    for noisy in _NOISY:
        logging.getLogger(noisy).setLevel(logging.DEBUG if args.verbose else logging.WARNING)


def build_parser() -> argparse.ArgumentParser:
    """The ``headcount`` command line's parser; each command's handler is ``args.handler``."""
    parser = argparse.ArgumentParser(
        prog="headcount",
        description="Exact people counts for every space, now and at any past moment.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug detail")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    import_.add_command(commands)
    count.add_command(commands)
    serve.add_command(commands)
    add_simulate(commands)
    broker.add_command(commands)
    dpus.add_command(commands)
    replay.add_command(commands)
    reset.add_command(commands)
    migrate.add_command(commands)
    partitions.add_command(commands)
    tokens.add_command(commands)
    return parser
