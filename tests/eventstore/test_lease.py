"""The store's lease: shared among services and imports, exclusive for a replay, released
when its holder ends, even by ``kill -9``."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import pytest
from sqlalchemy import text

from headcount.domain.shards import Shard
from headcount.errors import StoreBusyError
from headcount.eventstore.lease import ShardTakenError, lease, rewrite_lease, shard_lease
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


async def test_shard_replays_and_a_detach_keep_apart(store: EventStore) -> None:
    """Replays of shards go together; ``partitions detach`` goes alone (PostgreSQL: a SQLite
    log has no partitions, and the lock is no lock there)."""
    postgres = store.backend == "postgresql"
    async with (
        rewrite_lease(store, exclusive=False, holder="replay --shard 0/2"),
        rewrite_lease(store, exclusive=False, holder="replay --shard 1/2"),
    ):
        if postgres:
            with pytest.raises(StoreBusyError, match=r"detach: a replay of a shard is rewriting"):
                async with rewrite_lease(store, exclusive=True, holder="detach"):
                    pass
    async with rewrite_lease(store, exclusive=True, holder="detach"):
        if postgres:
            with pytest.raises(StoreBusyError, match=r"--shard 0/2: 'headcount partitions detach'"):
                async with rewrite_lease(store, exclusive=False, holder="replay --shard 0/2"):
                    pass
        # The store's lease is another lock: a service goes on beside either.
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


# -- a shard's lock ---------------------------------------------------------------------------


async def test_a_shard_has_one_holder_and_shards_are_independent(store: EventStore) -> None:
    async with shard_lease(store, Shard(1, 3), wait=False, holder="serve"):
        with pytest.raises(StoreBusyError, match=r"replay: shard 1/3 is held by another"):
            async with shard_lease(store, Shard(1, 3), wait=False, holder="replay"):
                pass
        async with (
            shard_lease(store, Shard(0, 3), wait=False, holder="serve"),
            shard_lease(store, Shard(2, 3), wait=False, holder="serve"),
        ):
            pass
    async with shard_lease(store, Shard(1, 3), wait=False, holder="replay"):
        pass


async def test_shards_of_another_count_are_refused(store: EventStore) -> None:
    """Shards of two counts would each own spaces the others own too."""
    async with shard_lease(store, Shard(0, 2), wait=False, holder="serve"):
        with pytest.raises(StoreBusyError, match=r"serve: shard 1/3: other processes serve"
                           r" this store as 2 shards; .* \(--shard I/2\)"):  # fmt: skip
            async with shard_lease(store, Shard(1, 3), wait=False, holder="serve"):
                pass
        async with shard_lease(store, Shard(1, 2), wait=False, holder="serve"):
            pass
    async with shard_lease(store, Shard(1, 3), wait=False, holder="serve"):
        pass  # once the others are gone, another count may start


async def test_a_standby_takes_the_shard_when_its_owner_lets_go(store: EventStore) -> None:
    owner = shard_lease(store, Shard(0, 2), wait=False, holder="serve")
    await owner.__aenter__()
    standby = asyncio.ensure_future(
        shard_lease(store, Shard(0, 2), wait=True, holder="serve", poll_s=0.02).__aenter__()
    )
    await asyncio.sleep(0.2)
    assert not standby.done()
    await owner.__aexit__(None, None, None)
    held = await asyncio.wait_for(standby, 10)
    assert held.shard == Shard(0, 2)


async def test_a_standby_gives_up_waiting_when_cancelled(store: EventStore) -> None:
    async with shard_lease(store, Shard(0, 2), wait=False, holder="serve"):
        waiting = asyncio.ensure_future(
            shard_lease(store, Shard(0, 2), wait=True, holder="serve", poll_s=0.02).__aenter__()
        )
        await asyncio.sleep(0.1)
        waiting.cancel()
        await asyncio.wait([waiting])
        assert waiting.cancelled()
    async with shard_lease(store, Shard(0, 2), wait=False, holder="serve"):
        pass  # nothing of the standby's left holding it


_HOLD_SHARD = """
import asyncio, sys
from headcount.domain.shards import Shard
from headcount.eventstore.lease import shard_lease
from headcount.eventstore.store import EventStore

async def main():
    async with await EventStore.open(sys.argv[1]) as store:
        async with shard_lease(store, Shard(2, 3), wait=False, holder="serve"):
            print("held", flush=True)
            await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_a_killed_owner_hands_its_shard_to_the_standby(store_url: str) -> None:
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _HOLD_SHARD, store_url, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert holder.stdout is not None
        assert await asyncio.wait_for(holder.stdout.readline(), 30) == b"held\n"
        async with await EventStore.open(store_url) as store:
            standby = asyncio.ensure_future(
                shard_lease(store, Shard(2, 3), wait=True, holder="serve", poll_s=0.05).__aenter__()
            )
            await asyncio.sleep(0.3)
            assert not standby.done()
            os.kill(holder.pid, signal.SIGKILL)
            await holder.wait()
            held = await asyncio.wait_for(standby, 10)
            assert held.shard == Shard(2, 3)
    finally:
        if holder.returncode is None:
            holder.kill()
            await holder.wait()


async def test_an_owner_whose_session_broke_takes_its_lock_again(store: EventStore) -> None:
    postgres_store = _postgres(store)
    async with shard_lease(postgres_store, Shard(0, 2), wait=False, holder="serve") as held:
        await _terminate_lock_sessions(postgres_store)
        watching = asyncio.ensure_future(held.watch(every_s=0.02))
        await asyncio.sleep(0.3)
        assert not watching.done()  # taken again, still serving
        with pytest.raises(StoreBusyError):
            async with shard_lease(postgres_store, Shard(0, 2), wait=False, holder="standby"):
                pass
        watching.cancel()
        await asyncio.wait([watching])


async def test_an_owner_whose_lock_another_took_stops(store: EventStore) -> None:
    postgres_store = _postgres(store)
    async with shard_lease(postgres_store, Shard(0, 2), wait=False, holder="serve") as held:
        await _terminate_lock_sessions(postgres_store)
        async with shard_lease(postgres_store, Shard(0, 2), wait=False, holder="standby"):
            with pytest.raises(ShardTakenError, match=r"another process took the shard over"):
                await asyncio.wait_for(held.watch(every_s=0.02), 10)


def _postgres(store: EventStore) -> EventStore:
    if store.backend != "postgresql":
        pytest.skip("an flock has no session that could break")
    return store


async def _terminate_lock_sessions(store: EventStore) -> None:
    """Cut the sessions that hold a shard's advisory lock, as a PostgreSQL restart would."""
    async with store.engine.connect() as conn:
        await conn.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_locks"
                " WHERE locktype = 'advisory' AND classid = :key AND database ="
                " (SELECT oid FROM pg_database WHERE datname = current_database())"
            ),
            {"key": 0x68637368},
        )
        await conn.commit()
