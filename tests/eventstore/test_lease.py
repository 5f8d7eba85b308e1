"""The store's lease: shared among services and imports, exclusive for a replay, released
when its holder ends, even by ``kill -9``."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import pytest

from headcount.errors import StoreBusyError
from headcount.eventstore.lease import lease
from headcount.eventstore.store import EventStore


async def test_shared_holders_go_together(store: EventStore) -> None:
    async with (
        lease(store, exclusive=False, holder="one"),
        lease(store, exclusive=False, holder="two"),
    ):
        with pytest.raises(StoreBusyError, match=r"replay: .*using this store; stop it first"):
            async with lease(store, exclusive=True, holder="replay"):
                pass
    async with lease(store, exclusive=True, holder="replay"):
        pass


async def test_an_exclusive_holder_goes_alone(store: EventStore) -> None:
    async with lease(store, exclusive=True, holder="replay"):
        with pytest.raises(StoreBusyError, match=r"serve: a replay is rewriting"):
            async with lease(store, exclusive=False, holder="serve"):
                pass
    async with lease(store, exclusive=False, holder="serve"):
        pass


_HOLD = """
import asyncio, sys
from headcount.eventstore.lease import lease
from headcount.eventstore.store import EventStore

async def main():
    async with await EventStore.open(sys.argv[1]) as store:
        async with lease(store, exclusive=False, holder="serve"):
            print("held", flush=True)
            await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_a_killed_holder_releases_the_lease(store_url: str) -> None:
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _HOLD, store_url, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert holder.stdout is not None
        assert await asyncio.wait_for(holder.stdout.readline(), 30) == b"held\n"
        async with await EventStore.open(store_url) as store:
            with pytest.raises(StoreBusyError):
                async with lease(store, exclusive=True, holder="replay"):
                    pass
            os.kill(holder.pid, signal.SIGKILL)
            await holder.wait()
            for _ in range(50):  # PostgreSQL notices the dead session within moments
                try:
                    async with lease(store, exclusive=True, holder="replay"):
                        return
                except StoreBusyError:
                    await asyncio.sleep(0.1)
            pytest.fail("the lease of a killed holder was not released")
    finally:
        if holder.returncode is None:
            holder.kill()
            await holder.wait()


async def test_an_in_memory_store_needs_no_lease() -> None:
    async with (
        await EventStore.open("sqlite+aiosqlite://") as store,
        lease(store, exclusive=True, holder="replay"),
        lease(store, exclusive=True, holder="replay"),
    ):
        pass
