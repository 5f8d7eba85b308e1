"""Per-DPU rate limits and the quarantine budget: the pieces, then one DPU flooding ingest
while another keeps counting."""

from __future__ import annotations

import pytest

from headcount.domain.events import Traversal
from headcount.eventstore.store import EventStore
from headcount.ingest import wire
from headcount.ingest.pipeline import IngestSettings
from headcount.ingest.ratelimit import (
    UNKNOWN_DPU,
    DpuRateLimiter,
    QuarantineBudget,
    RateLimit,
    TokenBucket,
)
from tests.faults.support_store import NOW, clean, lost_and_doubled, rig, stored_keys
from tests.ingest.inbox import Msg
from tests.polling import eventually
from tests.store_readers import quarantined


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_spends_its_burst_then_refills_at_its_rate() -> None:
    bucket = TokenBucket(RateLimit(rate=2, burst=3), now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(0.25) is False  # half a token
    assert bucket.take(0.5) is True  # a whole one
    assert bucket.take(0.5) is False
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]  # capped at 3


@pytest.mark.parametrize(
    ("rate", "burst"), [(0, 5), (-1, 5), (1, 0.5)], ids=["zero-rate", "negative-rate", "no-burst"]
)
def test_a_limit_that_lets_nothing_through_is_refused(rate: float, burst: float) -> None:
    with pytest.raises(ValueError, match="rate limit"):
        RateLimit(rate, burst)


def test_each_known_dpu_has_its_own_bucket_and_the_unknown_share_one() -> None:
    clock = FakeMonotonic()
    limiter = DpuRateLimiter(RateLimit(1, 2), known={"283", "423"}.__contains__, monotonic=clock)
    assert [limiter.allow("283") for _ in range(3)] == [True, True, False]
    assert limiter.allow("423") is True  # not starved by 283
    assert [limiter.allow("made-up-1"), limiter.allow("made-up-2")] == [True, True]
    assert limiter.allow("made-up-3") is False  # one bucket for every unknown id
    assert limiter.key("made-up-3") == UNKNOWN_DPU
    clock.now += 1
    assert limiter.allow("283") is True


def test_no_limit_lets_everything_through() -> None:
    limiter = DpuRateLimiter(None, known=lambda _: True)
    assert all(limiter.allow("283") for _ in range(100_000))


def test_the_budget_keeps_the_first_entries_per_dpu_and_reason_and_says_so_once() -> None:
    clock = FakeMonotonic()
    budget = QuarantineBudget(2, 60.0, monotonic=clock)
    answers = [budget.admit("283", "rate_limited") for _ in range(5)]
    assert [stored for stored, _ in answers] == [True, True, False, False, False]
    notes = [note for _, note in answers if note is not None]
    assert len(notes) == 1
    assert "at most 2 entries per DPU and reason every 60 s" in notes[0]
    assert "DPU '283' reached it for reason 'rate_limited'" in notes[0]
    assert budget.admit("283", "future_ts")[0] is True  # another reason
    assert budget.admit("423", "rate_limited")[0] is True  # another DPU
    clock.now += 60  # a new window
    assert budget.admit("283", "rate_limited") == (True, None)


FLOOD = 10_000
BURST = 100
KEEP = 20


async def test_one_dpu_flooding_does_not_starve_another(store: EventStore) -> None:
    """283 sends 10,000 messages as fast as it can; 423, meanwhile, one message in a hundred.
    With the clock stopped, 283 gets exactly its burst through; all of 423's are stored and
    counted; quarantine holds at most ``KEEP`` of the flood."""
    clock = FakeMonotonic()
    settings = IngestSettings(max_delay_s=0.001, dpu_rate=10, dpu_burst=BURST, quarantine_keep=KEEP)
    # Acknowledgements are not checked one by one here (10,000 queries): what is stored is.
    async with rig(store, settings, monotonic=clock, check_acks=False) as r:
        sent_423 = []
        for seq in range(1, FLOOD + 1):
            ts = NOW - 3_600_000 + seq * 100
            r.send([[Traversal("283", seq, ts, 1)]])
            if seq % 100 == 0:
                sent_423 += r.send([[Traversal("423", seq // 100, ts + 1, 1)]])
        total = FLOOD + len(sent_423)
        await eventually(lambda: r.acked == total, timeout=120, what="the flood acknowledged")

        stored = await stored_keys(r.store)
        assert sorted(k for k in stored if k[0] == "423") == [("423", n) for n in range(1, 101)]
        assert sorted(k for k in stored if k[0] == "283") == [("283", n) for n in range(1, 101)]
        # The reference fold of what was let through: 283's first BURST and all of 423's.
        r.sent = [t for t in r.sent if t.dpu_id == "423" or t.seq <= BURST]
        assert await lost_and_doubled(
            r, "one DPU flooding (counted: what the limit let through)"
        ) == clean(len(r.sent))

        entries = await quarantined(r.store, limit=1000)
        assert len(entries) == KEEP
        assert all(e.reason.startswith("rate_limited: DPU '283' sent more") for e in entries)
        assert all(e.origin == "mqtt:dpus/283/traversals" for e in entries)
        sample = r.ingest.metrics.registry.get_sample_value
        assert sample("headcount_rate_limited_total", {"dpu": "283"}) == FLOOD - BURST
        assert sample("headcount_rate_limited_total", {"dpu": "423"}) is None
        assert sample("headcount_quarantined_total", {"reason": "rate_limited"}) == KEEP
        assert sample("headcount_quarantine_suppressed_total", {"reason": "rate_limited"}) == (
            FLOOD - BURST - KEEP
        )


async def test_the_flood_is_refused_unread_so_it_costs_no_decoding(store: EventStore) -> None:
    clock = FakeMonotonic()
    settings = IngestSettings(max_delay_s=0.001, dpu_rate=1, dpu_burst=1, quarantine_keep=1)
    async with rig(store, settings, monotonic=clock) as r:
        r.inbox.put(*[Msg(wire.traversals_topic("283"), b"\xc1") for _ in range(3)])  # not msgpack
        await eventually(lambda: r.acked == 3, what="three messages acknowledged")
        sample = r.ingest.metrics.registry.get_sample_value
        assert sample("headcount_quarantined_total", {"reason": "not_msgpack"}) == 1
        assert sample("headcount_rate_limited_total", {"dpu": "283"}) == 2
