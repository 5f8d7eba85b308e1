"""When the cyclic garbage collector runs during long passes over the log.

A pass (a replay, a recovery) makes a tuple for every row it reads and drops it a moment
later. Reference counting frees each one; the cyclic collector, run every 700 allocations by
default, would still examine every row that is alive at that moment, and every few hundred
runs the whole heap (the topology, the spaces' states, the modules): about a seventh of a
replay's time. With a young generation of :data:`YOUNG` objects, the rows of a batch are gone
before a collection looks at them, and cycles are still collected, less often.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

__all__ = ["YOUNG", "bulk_pass"]

#: Allocations between two collections of the young generation during a pass.
YOUNG = 50_000

_depth = 0
_saved: tuple[int, int, int] | None = None


@contextlib.contextmanager
def bulk_pass() -> Iterator[None]:
    """Collect cycles less often while the block runs (the process's setting is put back
    when the last of several such blocks, nested or concurrent tasks, ends)."""
    global _depth, _saved
    if _depth == 0:
        _saved = gc.get_threshold()
        young, *older = _saved
        if young and young < YOUNG:  # 0: the collector is off; leave it so
            gc.set_threshold(YOUNG, *older)
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0 and _saved is not None:
            gc.set_threshold(*_saved)
            _saved = None
