"""The sensor-health reads (``EventStore.sensors``) on SQLite and PostgreSQL, each against the
figure worked out by hand or by a plain pass over the events."""

from __future__ import annotations

import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from headcount.domain.events import Direction, Traversal
from headcount.domain.topology import Source
from headcount.eventstore.sensors import HOUR_MS, SeqGaps
from headcount.eventstore.store import EventStore

T0 = 1_700_000_000_000  # a fixed moment, never the wall clock


def ev(dpu_id: str, seq: int, ts: int, direction: Direction = 1) -> Traversal:
    return Traversal(dpu_id, seq, ts, direction)


def source(dpu_id: str, valid_from: int = 0, valid_until: int | None = None) -> Source:
    return Source(dpu_id, "door", 1, valid_from, valid_until)


async def test_seq_gaps_counts_jumps_and_the_seqs_they_skip(store: EventStore) -> None:
    seqs = [1, 2, 3, 7, 8, 10, 20]  # jumps 3->7 (4, 5, 6), 8->10 (9), 10->20 (11..19)
    await store.log.append(ev("a", s, T0 + s * 1000) for s in seqs)
    await store.log.append([ev("b", 5, T0 + 5000)])  # another DPU's seqs are not a's
    gaps = await store.sensors.seq_gaps("a", after=T0, until=T0 + 60_000)
    assert gaps == SeqGaps(stored=7, first=1, last=20, gaps=3, missing=3 + 1 + 9)


async def test_seq_gaps_only_in_the_span_asked(store: EventStore) -> None:
    await store.log.append(ev("a", s, T0 + s * 1000) for s in [1, 5, 6, 9])
    # (T0 + 5s, T0 + 9s]: seqs 6 and 9 only; 1 and 5 are before it.
    gaps = await store.sensors.seq_gaps("a", after=T0 + 5000, until=T0 + 9000)
    assert gaps == SeqGaps(stored=2, first=6, last=9, gaps=1, missing=2)


async def test_seq_gaps_of_a_dpu_never_heard(store: EventStore) -> None:
    gaps = await store.sensors.seq_gaps("nobody", after=T0, until=T0 + 1)
    assert gaps == SeqGaps(stored=0, first=None, last=None, gaps=0, missing=0)


async def test_seq_gaps_are_in_seq_order_whatever_the_arrival(store: EventStore) -> None:
    await store.log.append([ev("a", 4, T0 + 4000)])
    await store.log.append([ev("a", 1, T0 + 1000), ev("a", 2, T0 + 2000)])
    gaps = await store.sensors.seq_gaps("a", after=T0, until=T0 + 10_000)
    assert (gaps.gaps, gaps.missing) == (1, 1)
    await store.log.append([ev("a", 3, T0 + 3000)])  # the late one fills the gap
    gaps = await store.sensors.seq_gaps("a", after=T0, until=T0 + 10_000)
    assert (gaps.gaps, gaps.missing) == (0, 0)


async def test_directions_through_sources_in_their_spans(store: EventStore) -> None:
    await store.log.append(
        [
            ev("a", 1, T0 + 1000, 1),
            ev("a", 2, T0 + 2000, 1),
            ev("a", 3, T0 + 3000, -1),
            ev("a", 4, T0 + 9000, -1),  # after the source's span ends
            ev("b", 1, T0 + 2000, -1),
        ]
    )
    sources = (source("a", T0, T0 + 5000), source("b", T0))
    assert await store.sensors.directions(sources, after=T0, until=T0 + 10_000) == (2, 2)
    assert await store.sensors.directions(sources, after=T0 + 1000, until=T0 + 10_000) == (1, 2)
    assert await store.sensors.directions((source("c"),), after=T0, until=T0 + 10_000) == (0, 0)


async def test_hourly_bins_by_hour_since_the_epoch(store: EventStore) -> None:
    hour = T0 // HOUR_MS
    times = [hour * HOUR_MS, hour * HOUR_MS + 1, (hour + 1) * HOUR_MS - 1, (hour + 2) * HOUR_MS]
    await store.log.append(ev("a", i, ts) for i, ts in enumerate(times))
    found = await store.sensors.hourly((source("a"),), after=0, until=(hour + 3) * HOUR_MS)
    assert found == {hour: 3, hour + 2: 1}


async def test_newest_up_to_until(store: EventStore) -> None:
    await store.log.append([ev("a", 1, T0 + 1000), ev("a", 2, T0 + 5000), ev("b", 1, T0 + 7000)])
    assert await store.sensors.newest((source("a"),), until=T0 + 10_000) == T0 + 5000
    assert await store.sensors.newest((source("a"),), until=T0 + 4000) == T0 + 1000
    assert await store.sensors.newest((source("a"), source("b")), until=T0 + 9000) == T0 + 7000
    assert await store.sensors.newest((source("a"),), until=T0) is None


_EXAMPLES = itertools.count()


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(seqs=st.sets(st.integers(0, 200), max_size=40))
async def test_seq_gaps_equal_a_plain_pass(store: EventStore, seqs: set[int]) -> None:
    """Any set of seqs: the statement agrees with walking them in order."""
    dpu = f"p{next(_EXAMPLES)}"  # the examples share the store: each has a DPU of its own
    await store.log.append(ev(dpu, s, T0 + s) for s in seqs)
    ordered = sorted(seqs)
    jumps = [b - a for a, b in itertools.pairwise(ordered) if b - a > 1]
    found = await store.sensors.seq_gaps(dpu, after=T0 - 1, until=T0 + 1000)
    assert found == SeqGaps(
        stored=len(ordered),
        first=ordered[0] if ordered else None,
        last=ordered[-1] if ordered else None,
        gaps=len(jumps),
        missing=sum(j - 1 for j in jumps),
    )
