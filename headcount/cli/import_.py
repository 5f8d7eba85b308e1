"""``headcount import``: load DPU rows from a CSV export into the store."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from headcount.cli.common import (
    Commands,
    UsageError,
    choose_topology,
    record,
    snapshots_parent,
    store_parent,
    topology_parent,
)
from headcount.domain.topology import TopologyChoice
from headcount.errors import HeadcountError
from headcount.eventstore.lease import lease
from headcount.eventstore.store import EventStore
from headcount.history import History
from headcount.importer.csvfile import open_export, read_csv
from headcount.importer.load import import_csv
from headcount.progress import Progress


def add_command(commands: Commands) -> None:
    cmd = commands.add_parser(
        "import",
        parents=[
            store_parent(),
            topology_parent(
                "it becomes the store's current topology. Default: the store's current topology,"
                " else a topology.toml beside the CSV file"
            ),
            snapshots_parent(),
        ],
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
    cmd.set_defaults(handler=run)


async def run(args: argparse.Namespace) -> int:
    path: Path = args.csv
    if not path.is_file():
        raise UsageError(f"cannot read {path}: no such file")
    async with await EventStore.open(args.store) as store:
        choice = await choose_topology(args, store, beside=path)
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
    args: argparse.Namespace, store: EventStore, choice: TopologyChoice, path: Path
) -> dict[str, Any]:
    topology = choice.topology
    await record(store, choice)
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


def _read_errors(path: Path) -> list[str]:
    with _open_csv(path) as lines:
        return [f"{path}:{e.line}: {e.reason}" for b in read_csv(lines) for e in b.errors]


def _open_csv(path: Path) -> Any:
    try:
        return open_export(path)
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from e
