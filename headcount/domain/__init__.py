"""The pure core: events, topology resolution and the fold. No I/O, no asyncio; nothing here
imports another part of headcount (import-linter holds it to that)."""

from headcount.domain.events import (
    Delta,
    Direction,
    Reset,
    SpaceEvent,
    Traversal,
    fold_key,
    space_delta,
)
from headcount.domain.fold import EMPTY, Folder, SpaceState, advance, fold, fold_all
from headcount.domain.timefmt import format_ms, parse_iso
from headcount.domain.topology import (
    Assignment,
    Doorway,
    Link,
    Source,
    Space,
    Topology,
    document_digest,
)

__all__ = [
    "EMPTY",
    "Assignment",
    "Delta",
    "Direction",
    "Doorway",
    "Folder",
    "Link",
    "Reset",
    "Source",
    "Space",
    "SpaceEvent",
    "SpaceState",
    "Topology",
    "Traversal",
    "advance",
    "document_digest",
    "fold",
    "fold_all",
    "fold_key",
    "format_ms",
    "parse_iso",
    "space_delta",
]
