"""New amqtt connections are let in one per pass of the event loop."""

from __future__ import annotations

import asyncio
import itertools

from headcount.ingest._amqtt_admission import Turns


async def passes_until(done: asyncio.Future[None]) -> int:
    """Loop passes until ``done``, counted by a task that yields once per pass."""
    passes = 0
    while not done.done():
        await asyncio.sleep(0)
        passes += 1
    return passes


async def test_waiters_get_one_turn_per_loop_pass_in_order() -> None:
    turns = Turns()
    order: list[int] = []
    passes_at_turn: list[int] = []
    passes = 0

    async def count_passes() -> None:
        nonlocal passes
        while True:
            await asyncio.sleep(0)
            passes += 1

    async def waiter(n: int) -> None:
        await turns.wait()
        order.append(n)
        passes_at_turn.append(passes)

    counter = asyncio.create_task(count_passes())
    await asyncio.gather(*(waiter(n) for n in range(5)))
    counter.cancel()
    assert order == [0, 1, 2, 3, 4]
    # Other work ran between any two turns: at least one pass of the loop apart.
    assert all(b > a for a, b in itertools.pairwise(passes_at_turn))


async def test_a_cancelled_waiter_holds_nobody_up() -> None:
    turns = Turns()
    first = asyncio.create_task(turns.wait())
    second = asyncio.create_task(turns.wait())
    await asyncio.sleep(0)  # both are waiting
    first.cancel()
    async with asyncio.timeout(1):
        await second
    assert first.cancelled()
