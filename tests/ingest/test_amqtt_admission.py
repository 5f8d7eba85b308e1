"""New amqtt connections are let in one at a time, a few milliseconds apart."""

from __future__ import annotations

import asyncio
import itertools

from headcount.ingest._amqtt_admission import Turns


async def test_waiters_get_turns_in_order_an_interval_apart() -> None:
    turns = Turns(interval=0.01)
    loop = asyncio.get_running_loop()
    order: list[int] = []
    passes_at_turn: list[int] = []
    times: list[float] = []
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
        times.append(loop.time())

    counter = asyncio.create_task(count_passes())
    await asyncio.gather(*(waiter(n) for n in range(5)))
    counter.cancel()
    assert order == [0, 1, 2, 3, 4]
    # Other work ran between any two turns, at least the interval apart.
    assert all(b > a for a, b in itertools.pairwise(passes_at_turn))
    assert all(b - a >= 0.009 for a, b in itertools.pairwise(times))


async def test_a_cancelled_waiter_holds_nobody_up() -> None:
    turns = Turns()
    first = asyncio.create_task(turns.wait())
    second = asyncio.create_task(turns.wait())
    await asyncio.sleep(0)  # both are waiting
    first.cancel()
    async with asyncio.timeout(1):
        await second
    assert first.cancelled()
