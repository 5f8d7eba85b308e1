"""A slow store under a burst: what ingest holds stays under its bound (the rest waits with
the broker), and everything is stored and counted in the end."""

from __future__ import annotations

from headcount.eventstore.store import EventStore
from headcount.ingest import wire
from headcount.ingest.pipeline import IngestSettings
from tests.faults.support_store import (
    SlowCommits,
    clean,
    lost_and_doubled,
    rig,
    traversal_messages,
)
from tests.ingest.inbox import Msg
from tests.polling import eventually

MESSAGES = 10_000


async def test_a_burst_on_a_slow_store_holds_a_bounded_number_of_messages(
    store: EventStore,
) -> None:
    # No rate limit: 283 sends 7,500 messages here, and this test is about backpressure.
    settings = IngestSettings(max_events=200, max_delay_s=0.001, queue_size=500, dpu_rate=None)
    slow = SlowCommits(store.engine, latency_s=0.05)
    try:
        async with rig(store, settings) as r:
            # Half the burst carries a traversal, half is refused unread (no traversal to
            # fill a batch): a batch must close on its number of messages too.
            traversing = traversal_messages(MESSAGES // 2)
            r.send(traversing)
            garbage = [Msg(wire.traversals_topic("283"), b"\xc1") for _ in range(MESSAGES // 2)]
            r.inbox.put(*garbage)
            await eventually(
                lambda: r.acked == MESSAGES, timeout=120, what="the whole burst acknowledged"
            )
            assert slow.commits >= MESSAGES // 2 // settings.max_events, slow.commits
            assert max(r.held) <= settings.max_held, (max(r.held), settings.max_held)
            assert max(r.held) > settings.queue_size, "the store was not slow enough to matter"
            assert max(r.mailboxes) <= 10_000
            print(f"slow store: at most {max(r.held)} messages held (limit {settings.max_held})")
            assert await lost_and_doubled(
                r, f"slow store ({store.engine.dialect.name}, 50 ms a commit)"
            ) == clean(len(r.sent))
    finally:
        slow.remove()
