"""Checked topologies kept between runs, so a large one is read and checked once.

Reading and checking a topology file of 100,000 spaces takes seconds of CPU (the TOML parser
alone several), and leaves the parser's garbage in the process's memory for good: every start
of the service and every command paid both. A topology that took long to read is kept here in
its compact form (``Topology.to_compact``, JSON) under the digest of its exact text, the
format and the code that reads it; the next read of the same text loads that instead, which
takes a fraction of the time and memory. A different text, other code (a new release) or an
unreadable entry: the TOML is simply read again.

Where: ``$HEADCOUNT_CACHE_DIR``, else ``$XDG_CACHE_HOME/headcount``, else
``~/.cache/headcount``; ``HEADCOUNT_CACHE_DIR=off`` keeps nothing. The entries are as
trustworthy as the topology files they come from: keep the directory writable by the service's
user only. The newest few are kept; older ones are removed when a new one is written.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
from pathlib import Path

from headcount.domain import _topology_parse, topology
from headcount.domain.topology import COMPACT_FORMAT, Topology

__all__ = ["CACHE_ENV", "cache_dir", "read_topology"]

log = logging.getLogger(__name__)

CACHE_ENV = "HEADCOUNT_CACHE_DIR"
#: Smaller documents are read in well under a second: not worth a file.
_CACHE_FROM_CHARS = 1_000_000
#: Entries kept (a large deployment's topology and a few versions of it).
_KEEP = 4


def cache_dir() -> Path | None:
    """Where checked topologies are kept; ``None`` when caching is off."""
    chosen = os.environ.get(CACHE_ENV)
    if chosen is not None:
        return None if chosen.strip().lower() in ("", "off") else Path(chosen)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "headcount"


def read_topology(document: str, *, source: str) -> Topology:
    """``Topology.from_toml(document, source=source)``, through the cache for a large
    document: loaded from it when it holds this exact text, else read, checked and kept.
    The cache never changes an answer or an error: an invalid document is never kept, and a
    problem with the cache is logged and the document read as if there were none."""
    directory = cache_dir() if len(document) >= _CACHE_FROM_CHARS else None
    code = _code_digest() if directory is not None else None
    if directory is None or code is None:
        return Topology.from_toml(document, source=source)
    key = hashlib.sha256(f"{COMPACT_FORMAT}\n{code}\n{document}".encode()).hexdigest()
    entry = directory / f"topology-{key}.json"
    try:
        topology = Topology.from_compact(json.loads(entry.read_bytes()))
        with contextlib.suppress(OSError):
            os.utime(entry)  # in use: among the newest, kept
        return topology
    except FileNotFoundError:
        pass
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("the cached topology %s is unusable (%s); reading %s again", entry, e, source)
    topology = Topology.from_toml(document, source=source)
    try:
        _keep(directory, entry, json.dumps(topology.to_compact(), separators=(",", ":")))
    except OSError as e:
        log.warning(
            "cannot keep the checked topology in %s (%s); it is read again next time"
            " (set %s to a writable directory, or to 'off')",
            directory,
            e.strerror or e,
            CACHE_ENV,
        )
    return topology


@functools.cache
def _code_digest() -> str | None:
    """A digest of the code that reads and checks a topology: an entry kept by other code
    (another release, a change in development) is never loaded. ``None`` when that code's
    source cannot be read (nothing is cached then)."""
    digest = hashlib.sha256()
    for module in (topology, _topology_parse):
        try:
            digest.update(Path(module.__file__ or "").read_bytes())
        except OSError:
            return None
    return digest.hexdigest()


def _keep(directory: Path, entry: Path, text: str) -> None:
    """Write ``entry`` whole or not at all, then drop all but the newest entries."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    partial = entry.with_name(f"{entry.name}.{os.getpid()}.partial")
    try:
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, entry)
    finally:
        partial.unlink(missing_ok=True)
    entries: list[tuple[float, Path]] = []
    for found in directory.glob("topology-*.json"):
        with contextlib.suppress(OSError):  # another process may be removing it
            entries.append((found.stat().st_mtime, found))
    for _, old in sorted(entries, reverse=True)[_KEEP:]:
        with contextlib.suppress(OSError):
            old.unlink()
