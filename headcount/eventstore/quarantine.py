"""Quarantine: input refused with its reason, kept so a person can see what was wrong.

Anyone who can publish can put anything here, so every entry is made to fit whatever it holds:
the origin and reason become printable text of bounded length (a NUL byte or invalid UTF-8 in
an MQTT topic cannot fail the insert), and only a bounded prefix of the payload is kept (a
10 MB payload cannot fill the disk).
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from headcount.clock import Clock, now_ms
from headcount.eventstore.engine import write_transaction
from headcount.eventstore.records import QuarantineEntry
from headcount.eventstore.schema import quarantine

__all__ = [
    "MAX_ORIGIN",
    "MAX_PAYLOAD_KEPT",
    "MAX_REASON",
    "Quarantine",
    "fitting",
    "insert_entries",
]

#: The ``origin`` column's width.
MAX_ORIGIN = 300
#: Characters of a reason kept (a reason quotes what it refused, which a stranger chose).
MAX_REASON = 2_000
#: Bytes of a refused payload kept: enough to see what it was, not enough to fill a disk.
MAX_PAYLOAD_KEPT = 4_096


class Quarantine:
    """Keeps refused input (``EventStore.quarantine``)."""

    def __init__(self, engine: AsyncEngine, *, clock: Clock = now_ms) -> None:
        self.engine = engine
        self._clock = clock

    async def add(self, entries: Sequence[QuarantineEntry]) -> None:
        """Keep refused input with its reason, each entry made to fit (:func:`fitting`)."""
        if entries:
            async with write_transaction(self.engine) as conn:
                await insert_entries(conn, entries, now=self._clock())


def fitting(entry: QuarantineEntry) -> QuarantineEntry:
    """``entry`` in a form every backend stores: origin and reason printable and bounded, the
    payload cut to :data:`MAX_PAYLOAD_KEPT` bytes (the reason then says how long it was)."""
    reason = entry.reason
    payload = entry.payload
    if len(payload) > MAX_PAYLOAD_KEPT:
        reason = f"{reason} [payload: first {MAX_PAYLOAD_KEPT:,} of {len(payload):,} bytes kept]"
        payload = payload[:MAX_PAYLOAD_KEPT]
    return QuarantineEntry(
        origin=_printable(entry.origin, MAX_ORIGIN),
        reason=_printable(reason, MAX_REASON),
        payload=payload,
        received_at=entry.received_at,
    )


async def insert_entries(
    conn: AsyncConnection, entries: Sequence[QuarantineEntry], *, now: int
) -> None:
    """Insert ``entries`` (made to fit) in ``conn``'s transaction."""
    if not entries:
        return
    rows = []
    for e in map(fitting, entries):
        rows.append(
            {
                "received_at": e.received_at or now,
                "origin": e.origin,
                "reason": e.reason,
                "payload": e.payload,
            }
        )
    await conn.execute(quarantine.insert(), rows)


def _printable(text: str, limit: int) -> str:
    """``text`` with control characters, NUL and lone surrogates (undecodable bytes) escaped,
    cut to ``limit`` characters with a mark that it was cut."""
    safe = "".join(
        c if c.isprintable() and not 0xD800 <= ord(c) <= 0xDFFF else _escape(c) for c in text
    )
    if len(safe) <= limit:
        return safe
    tail = f"...[{len(safe):,} chars]"
    return safe[: limit - len(tail)] + tail


def _escape(c: str) -> str:
    code = ord(c)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
