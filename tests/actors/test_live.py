"""LiveSpace: the live state equals the fold of everything received, in any arrival order."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from headcount.actors.live import Applied, DeltaRow, LiveSpace, Outcomes
from headcount.domain.events import TRAVERSAL_RANK, Delta, Reset, SpaceEvent, fold_key
from headcount.domain.fold import EMPTY, advance, fold_all
from headcount.domain.topology import Space

ROOM = Space("room", "Room")


def d(ts: int, delta: int, seq: int, dpu: str = "1") -> Delta:
    return Delta(ts, dpu, seq, 1 if delta > 0 else -1)


def as_row(delta: Delta) -> DeltaRow:
    return ((delta.ts, TRAVERSAL_RANK, delta.dpu_id, delta.seq), delta.delta)


def reference(space: Space, events: list[SpaceEvent]) -> tuple[int, int, int]:
    state = fold_all(space, EMPTY, sorted(set(events), key=fold_key))
    return (state.count, state.entrances, state.exits)


def test_out_of_order_event_refolds_through_the_floor() -> None:
    live = LiveSpace(ROOM, EMPTY, checkpoint=0)
    assert live.apply(d(20, -1, 2)) is Applied.APPENDED
    assert live.apply(d(30, 1, 3)) is Applied.APPENDED
    assert live.state.count == 1  # the leave was floored
    assert live.apply(d(10, 1, 1)) is Applied.REFOLDED
    assert live.state.count == 1  # enter, leave, enter
    assert live.apply(d(10, 1, 1)) is Applied.DUPLICATE
    assert live.state.count == 1


def test_settle_bounds_memory_and_older_events_are_too_late() -> None:
    live = LiveSpace(ROOM, EMPTY, checkpoint=0)
    for seq in range(1, 11):
        live.apply(d(seq * 10, 1, seq))
    assert live.settle(50) == 5
    assert live.checkpoint == 50
    assert len(live.recent) == 5
    assert live.state.count == 10
    assert live.apply(d(50, 1, 99)) is Applied.TOO_LATE
    assert live.apply(d(51, 1, 98)) is Applied.REFOLDED


events = st.lists(
    st.one_of(
        st.builds(
            d,
            st.integers(1, 60),
            st.sampled_from([1, -1]),
            st.integers(0, 30),
            st.sampled_from(["a", "b"]),
        ),
        st.builds(Reset, st.just("room"), st.integers(1, 60), st.integers(0, 4)),
    ),
    max_size=40,
    unique_by=lambda e: (e.dpu_id, e.seq) if isinstance(e, Delta) else (e.ts,),
)


@given(
    events=events,
    repeats=st.lists(st.integers(0, 39), max_size=8),
    settles=st.lists(st.integers(0, 60), max_size=4),
    data=st.data(),
    allow_negative=st.booleans(),
)
def test_live_state_equals_the_fold_of_everything_received(
    events: list[SpaceEvent],
    repeats: list[int],
    settles: list[int],
    data: st.DataObject,
    allow_negative: bool,
) -> None:
    space = Space("room", "Room", allow_negative=allow_negative)
    arrivals = data.draw(st.permutations(events + [events[i] for i in repeats if i < len(events)]))
    live = LiveSpace(space, EMPTY, checkpoint=0)
    received: list[SpaceEvent] = []
    for i, event in enumerate(arrivals):
        received.append(event)
        if live.apply(event) is Applied.TOO_LATE:
            # What the actor does: the store folds everything up to the checkpoint.
            upto = [e for e in received if e.ts <= live.checkpoint]
            settled = advance(
                space, fold_all(space, EMPTY, sorted(set(upto), key=fold_key)), live.checkpoint
            )
            live.reload(settled)
        if i < len(settles):
            live.settle(settles[i])
        state = live.state
        assert (state.count, state.entrances, state.exits) == reference(space, received)


@given(
    events=events,
    repeats=st.lists(st.integers(0, 39), max_size=8),
    checkpoint=st.integers(0, 30),
    sizes=st.lists(st.integers(1, 8), min_size=1, max_size=6),
    rows=st.booleans(),
    data=st.data(),
)
def test_apply_all_in_batches_is_apply_one_by_one(
    events: list[SpaceEvent],
    repeats: list[int],
    checkpoint: int,
    sizes: list[int],
    rows: bool,
    data: st.DataObject,
) -> None:
    """Folding batches (one refold per batch, the state kept in place) gives what folding
    each event in turn gives: the same state, recent events and outcomes."""
    arrivals = data.draw(st.permutations(events + [events[i] for i in repeats if i < len(events)]))
    settled = advance(ROOM, EMPTY, checkpoint)
    one, batched = LiveSpace(ROOM, settled, checkpoint), LiveSpace(ROOM, settled, checkpoint)
    outcomes = [(one.apply(e), e) for e in arrivals]
    totals = Outcomes()
    start = n = 0
    while start < len(arrivals):
        size = sizes[n % len(sizes)]
        # Deltas as routing hands them over (rows), or as events.
        batch = [
            as_row(e) if rows and isinstance(e, Delta) else e
            for e in arrivals[start : start + size]
        ]
        out = batched.apply_all(batch)
        totals.appended += out.appended
        totals.resets += out.resets
        totals.refolded += out.refolded
        totals.duplicates += out.duplicates
        totals.too_late += out.too_late
        start, n = start + size, n + 1
    assert batched.state == one.state
    assert batched.recent == one.recent
    expected = Outcomes(
        appended=sum(a is Applied.APPENDED for a, _ in outcomes),
        resets=sum(a is Applied.APPENDED and isinstance(e, Reset) for a, e in outcomes),
        refolded=sum(a is Applied.REFOLDED for a, _ in outcomes),
        duplicates=sum(a is Applied.DUPLICATE for a, _ in outcomes),
        too_late=sum(a is Applied.TOO_LATE for a, _ in outcomes),
    )
    assert totals == expected
