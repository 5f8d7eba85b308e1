"""A store file that becomes read-only under a running service (``chattr +i``: not even root
may write it), and a PostgreSQL database set read-only: ingest holds what it cannot store,
acknowledges none of it, says so in the log and ``/healthz``, and stores everything exactly
once when the store is writable again."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from headcount.eventstore.store import EventStore
from tests.faults.support_store import (
    clean,
    ext4_filesystem,
    immutable,
    lost_and_doubled,
    rig,
    traversal_messages,
)
from tests.polling import eventually

EVENTS = 1_000


@pytest.mark.parametrize("new_connections", [False, True], ids=["open-connections", "reopened"])
async def test_a_read_only_store_file_holds_ingest_until_it_is_writable(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, new_connections: bool
) -> None:
    # On ext4, which refuses writes to an immutable file even through open descriptors.
    with ext4_filesystem(tmp_path / "disk", 32) as disk:
        path = disk / "store.db"
        async with (
            await EventStore.open(f"sqlite+aiosqlite:///{path}") as store,
            rig(store) as r,
        ):
            batches = traversal_messages(EVENTS, per_message=4)
            first = r.send(batches[:1])
            await eventually(lambda: r.acked == len(first), what="the first message acked")

            files = [path, path.with_name(path.name + "-wal")]
            immutable(*files, on=True)
            try:
                if new_connections:
                    # The connections the store opens from now on find the file read-only.
                    await store.engine.dispose()
                messages = r.send(batches[1:])
                total = len(first) + len(messages)
                detail = await r.health_becomes(503)
                assert detail.startswith("the store refuses writes:"), detail
                assert "read-only" in detail, detail
                assert "none acknowledged" in detail, detail
                assert r.acked == len(first), "acknowledged while the file was read-only"
                assert "the store refuses writes" in caplog.text
            finally:
                immutable(*files, on=False)

            await eventually(
                lambda: r.acked == total, timeout=60, what="every message acknowledged"
            )
            await r.health_becomes(200)
            assert await lost_and_doubled(
                r, f"read-only store file ({'reopened' if new_connections else 'open connections'})"
            ) == clean(len(r.sent))


@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)
async def test_a_read_only_postgresql_database_holds_ingest_until_it_is_writable(
    store_url: str,
) -> None:
    """The test's own database set read-only (``default_transaction_read_only``, as on a
    standby): the same promise on PostgreSQL, and the read-only sessions are not kept."""
    name = make_url(store_url).database
    # The test's own session, writable whatever the database's default.
    admin = create_async_engine(
        store_url, connect_args={"server_settings": {"default_transaction_read_only": "off"}}
    )

    async def read_only(on: bool) -> None:
        async with admin.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            value = "on" if on else "off"
            await conn.execute(
                text(f'ALTER DATABASE "{name}" SET default_transaction_read_only = {value}')
            )

    try:
        async with await EventStore.open(store_url) as store, rig(store) as r:
            batches = traversal_messages(EVENTS, per_message=4)
            first = r.send(batches[:1])
            await eventually(lambda: r.acked == len(first), what="the first message acked")

            await read_only(True)
            await store.engine.dispose()  # sessions from now on start read-only
            messages = r.send(batches[1:])
            total = len(first) + len(messages)
            detail = await r.health_becomes(503)
            assert detail.startswith("the store refuses writes: read-only"), detail
            assert r.acked == len(first), "acknowledged while the database was read-only"

            await read_only(False)
            await eventually(
                lambda: r.acked == total, timeout=60, what="every message acknowledged"
            )
            await r.health_becomes(200)
            assert await lost_and_doubled(r, "read-only PostgreSQL database") == clean(len(r.sent))
    finally:
        await admin.dispose()
