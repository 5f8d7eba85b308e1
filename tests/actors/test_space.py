"""An actor's mailbox: batches handed in together, bounded by the events it holds."""

from __future__ import annotations

import asyncio

from headcount.actors.live import DeltaRow
from headcount.actors.space import Mailbox
from headcount.domain.events import TRAVERSAL_RANK

NOW = 1_700_000_000_000


def deltas(n: int, first: int = 0) -> list[DeltaRow]:
    return [((NOW + i, TRAVERSAL_RANK, "d", i), 1) for i in range(first, first + n)]


async def test_take_returns_every_batch_waiting_in_order() -> None:
    mailbox = Mailbox(100)
    await mailbox.put(deltas(3))
    await mailbox.put(deltas(2, first=3))
    await mailbox.put([])  # nothing handed in
    assert mailbox.qsize() == 5
    taken = await mailbox.take()
    assert [e for batch in taken for e in batch] == deltas(5)
    assert mailbox.qsize() == 0
    assert mailbox.empty()


async def test_a_full_mailbox_holds_the_sender_until_events_are_taken() -> None:
    mailbox = Mailbox(4)
    await mailbox.put(deltas(5))  # admitted: fewer than 4 were waiting
    sending = asyncio.create_task(mailbox.put(deltas(1, first=5)))
    await asyncio.sleep(0.01)
    assert not sending.done()
    assert mailbox.qsize() == 5
    await mailbox.take()
    await asyncio.wait_for(sending, 1)
    assert mailbox.qsize() == 1


async def test_join_waits_until_what_was_taken_is_done() -> None:
    mailbox = Mailbox(10)
    await mailbox.join()  # empty: at once
    await mailbox.put(deltas(3))
    joined = asyncio.create_task(mailbox.join())
    taken = await mailbox.take()
    await asyncio.sleep(0.01)
    assert not joined.done()  # taken, not yet folded
    mailbox.done(sum(map(len, taken)))
    await asyncio.wait_for(joined, 1)


async def test_take_waits_for_a_batch() -> None:
    mailbox = Mailbox(10)
    taking = asyncio.create_task(mailbox.take())
    await asyncio.sleep(0.01)
    assert not taking.done()
    await mailbox.put(deltas(2))
    assert [e for batch in await asyncio.wait_for(taking, 1) for e in batch] == deltas(2)
