"""The limit of bench/scale.py, in a process of its own and with nothing but the standard
library: read the topology file with bare ``tomllib``, then scan the log through bare
``sqlite3`` in fold order (the order recovery streams it in, each row's DPU and direction:
what this fold needs), adding each row's direction to its DPU's space's count, floored at
zero. Prints the rows read and the process's peak resident
memory (KiB) as JSON.

    python bench/_bare_recovery.py TOPOLOGY STORE
"""

from __future__ import annotations

import json
import sqlite3
import sys
import tomllib
from pathlib import Path


def bare_recovery(topology: Path, store: Path) -> int:
    """Rows folded: each of the harness topology's doorways links one space."""
    data = tomllib.loads(topology.read_text())
    doorway_of = {a["dpu"]: a["doorway"] for a in data["assignments"]}
    space_of = {d["id"]: d["links"][0]["space"] for d in data["doorways"]}
    del data
    counts = dict.fromkeys(space_of.values(), 0)
    conn = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    rows = 0
    cursor = conn.execute(
        "SELECT dpu_id, direction FROM traversals"
        " WHERE position <= (SELECT max(position) FROM traversals)"
        " ORDER BY ts, dpu_id, seq"
    )
    while batch := cursor.fetchmany(5000):
        for dpu_id, direction in batch:
            space = space_of[doorway_of[dpu_id]]
            counts[space] = max(0, counts[space] + direction)
        rows += len(batch)
    conn.close()
    return rows


def peak_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


if __name__ == "__main__":
    rows = bare_recovery(Path(sys.argv[1]), Path(sys.argv[2]))
    print(json.dumps({"rows": rows, "peak_kib": peak_kib()}))
