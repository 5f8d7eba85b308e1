"""Loading a CSV export into the store: the work behind ``headcount import`` and the demo."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from headcount.domain.events import Traversal
from headcount.domain.timefmt import format_ms
from headcount.domain.topology import Topology
from headcount.eventstore.records import QuarantineEntry
from headcount.eventstore.store import EventStore
from headcount.importer.csvfile import CsvBatch, RowError, open_export, read_csv
from headcount.progress import Progress


@dataclass(slots=True)
class ImportSummary:
    """What an import did. ``duplicate_rows_in_file`` were repeated in the file;
    ``already_stored`` were in the store before (a file imported again)."""

    file: str
    rows: int = 0
    stored: int = 0
    duplicate_rows_in_file: int = 0
    already_stored: int = 0
    conflicts_quarantined: int = 0
    unassigned_quarantined: int = 0
    malformed_rows: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return {k.replace("_", " "): v for k, v in asdict(self).items()}


async def import_csv(
    store: EventStore,
    topology: Topology,
    path: Path,
    *,
    on_row_error: Callable[[RowError], None] | None = None,
    progress: Progress | None = None,
) -> ImportSummary:
    """Append every valid row of the CSV at ``path``. Rows from a DPU that has no doorway at
    their time go to quarantine (an assignment added later and a re-import stores them)."""
    summary = ImportSummary(file=str(path))
    with open_export(path) as lines:
        batches = read_csv(lines, on_progress=None if progress is None else progress.update)
        for batch in batches:
            for error in batch.errors:
                if on_row_error is not None:
                    on_row_error(error)
            await _append(store, topology, path, batch, summary)
    if progress is not None:
        summary.seconds = round(progress.finish(summary.rows), 3)
    return summary


async def _append(
    store: EventStore, topology: Topology, path: Path, batch: CsvBatch, summary: ImportSummary
) -> None:
    assigned: list[Traversal] = []
    unassigned: list[Traversal] = []
    for t in batch.traversals:
        (assigned if topology.assignment_at(t.dpu_id, t.ts) else unassigned).append(t)
    result = await store.log.append(
        assigned,
        quarantine=[
            QuarantineEntry(
                origin=f"csv:{path}",
                reason=f"DPU {t.dpu_id!r} has no doorway at {format_ms(t.ts)} in the topology;"
                " add an assignment and import the file again",
                payload=json.dumps(
                    {"timestamp": format_ms(t.ts), "direction": t.direction, "dpu_id": t.dpu_id}
                ).encode(),
            )
            for t in unassigned
        ],
    )
    summary.rows += batch.rows
    summary.stored += len(result.new)
    summary.duplicate_rows_in_file += batch.duplicates
    summary.already_stored += result.duplicates
    summary.conflicts_quarantined += len(result.conflicts)
    summary.unassigned_quarantined += len(unassigned)
    summary.malformed_rows += len(batch.errors)
