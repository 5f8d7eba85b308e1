"""A replay's fold of a space's rows in bulk (``_Track.fold_pending``) against the same rows
folded one by one (``_Track.delta``): the same state, snapshots, probes and kept events,
whatever the cadence, the floor, the probes and where the kept events begin."""

from __future__ import annotations

from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st

from headcount.domain.events import Direction
from headcount.domain.topology import Topology
from headcount.eventstore.records import Head
from headcount.history import SpaceView
from headcount.history.counts import Cadence
from headcount.history.replay import _Track

T = 1_600_000_000_000
HEAD = Head(10, 0)


def topology(allow_negative: bool) -> Topology:
    return Topology.from_dict(
        {
            "spaces": [{"id": "A", "name": "A", "allow_negative": allow_negative}],
            "doorways": [
                {"id": "X", "name": "X", "links": [{"space": "A", "sensor_placement": 1}]}
            ],
            "assignments": [{"dpu": "283", "doorway": "X", "valid_from": "2018-01-01T00:00:00Z"}],
        }
    )


def track(topo: Topology, every: int | None, horizon: int) -> _Track:
    cadence = None if every is None else Cadence(every, horizon)
    return _Track(topo.space("A"), SpaceView.of(topo, "A"), cadence, [])


#: Times in a few milliseconds, so that several events share one (a snapshot waits for the
#: time to move on), and deltas mostly -1, so that the floor stops the count often.
rows_strategy = st.lists(
    st.tuples(st.integers(0, 20), st.sampled_from([1, -1, -1])), min_size=1, max_size=80
).map(lambda drawn: sorted(drawn, key=lambda row: row[0]))


@settings(max_examples=300, deadline=None)
@given(
    rows=rows_strategy,
    splits=st.lists(st.integers(1, 80), max_size=4),
    every=st.none() | st.integers(1, 7),
    horizon=st.integers(0, 25),
    probes=st.lists(st.integers(-1, 22), max_size=4).map(sorted),
    recent_after=st.none() | st.integers(-1, 22),
    after=st.none() | st.integers(-1, 10),
    allow_negative=st.booleans(),
)
def test_bulk_fold_equals_one_by_one(
    rows: list[tuple[int, Direction]],
    splits: list[int],
    every: int | None,
    horizon: int,
    probes: list[int],
    recent_after: int | None,
    after: int | None,
    allow_negative: bool,
) -> None:
    topo = topology(allow_negative)
    bulk, single = track(topo, every, T + horizon), track(topo, every, T + horizon)
    for t in (bulk, single):
        t.watch([T + p for p in probes], [])
        if recent_after is not None:
            t.recent_after = T + recent_after
        if after is not None:
            t.after = T + after
    keyed = [("283", seq, T + at, delta) for seq, (at, delta) in enumerate(rows)]
    # In batches, as the scan hands them over.
    cuts = sorted({0, len(keyed), *(c for c in splits if c < len(keyed))})
    add = bulk.adder()  # as a DPU's hand holds it
    for start, end in pairwise(cuts):
        for row in keyed[start:end]:
            add(row)
        bulk.fold_pending(HEAD)
        for dpu_id, seq, ts, delta in keyed[start:end]:
            single.delta(ts, dpu_id, seq, delta, HEAD)
    bulk.finish(HEAD)
    single.finish(HEAD)
    assert bulk.state == single.state
    assert bulk.events == single.events
    assert [s.state for s in bulk.sink] == [s.state for s in single.sink]
    assert bulk.probed == single.probed
    assert bulk.recent == single.recent
