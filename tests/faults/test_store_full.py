"""SQLite on a full disk: ingest holds what it cannot store, acknowledges none of it, says so in
the log and ``/healthz``, and stores everything exactly once when space is back."""

from __future__ import annotations

from pathlib import Path

import pytest

from headcount.eventstore.store import EventStore
from tests.faults.support_store import (
    clean,
    fill,
    lost_and_doubled,
    rig,
    small_filesystem,
    traversal_messages,
)
from tests.polling import eventually

EVENTS = 3_000


async def test_a_full_disk_holds_ingest_until_space_is_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with small_filesystem(tmp_path / "disk", "2m") as disk:
        async with (
            await EventStore.open(f"sqlite+aiosqlite:///{disk / 'store.db'}") as store,
            rig(store) as r,
        ):
            batches = traversal_messages(EVENTS, per_message=5)
            first = r.send(batches[:1])
            await eventually(lambda: r.acked == len(first), what="the first message acked")

            filler = fill(disk)
            messages = r.send(batches[1:])
            total = len(first) + len(messages)
            detail = await r.health_becomes(503)
            assert detail.startswith("the store refuses writes: disk full"), detail
            assert "none acknowledged" in detail, detail
            assert "free space" in detail, detail
            assert r.acked < total, "the disk filled up too late: every message was stored"
            assert "the store refuses writes: disk full" in caplog.text

            filler.unlink()  # space is back
            await eventually(
                lambda: r.acked == total, timeout=60, what="every message acknowledged"
            )
            await r.health_becomes(200)
            assert await lost_and_doubled(r, "disk full (SQLite on a 2 MB tmpfs)") == clean(
                len(r.sent)
            )
