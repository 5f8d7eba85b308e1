"""Rollups against the fold: applied one after another from any count, they give each
five-minute bucket's count, lowest, highest, entrances, exits and events as the series' own
fold of the events does (``history.series.BucketFold``), daily resets and the floor included."""

from __future__ import annotations

from datetime import UTC, datetime, time
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headcount.domain.fold import SpaceState
from headcount.domain.rollups import BUCKET_MS, Rollup, RollupBuilder
from headcount.domain.topology import Space
from headcount.eventstore.answers import RESET, TRAVERSAL
from headcount.history.series import BucketFold

# Around the 2026-03-08 change in New York, where its daily reset at 02:30 is skipped.
T0 = int(datetime(2026, 3, 7, 20, tzinfo=UTC).timestamp() * 1000)
SPAN = 12 * BUCKET_MS * 2  # two hours of buckets

spaces = st.builds(
    Space,
    id=st.just("A"),
    name=st.just("A"),
    time_zone=st.sampled_from(["UTC", "America/New_York", "Asia/Kolkata"]),
    daily_reset=st.sampled_from([None, time(0, 0), time(2, 30), time(21, 5)]),
    allow_negative=st.booleans(),
)
# Times in a few buckets, often on a boundary; mostly deltas, some resets.
items = st.lists(
    st.tuples(
        st.integers(0, SPAN - 1) | st.sampled_from([0, BUCKET_MS, 2 * BUCKET_MS - 1]),
        st.sampled_from([TRAVERSAL, TRAVERSAL, TRAVERSAL, RESET]),
        st.sampled_from([1, -1, -1]),
        st.integers(0, 4),
    ),
    max_size=60,
)


def in_fold_order(drawn: list[tuple[int, int, int, int]]) -> list[tuple[int, int, int]]:
    """The drawn items as ``(ts, kind, value)`` in fold order, at most one reset in a
    millisecond (as the store keeps them)."""
    rows = sorted(
        {
            (T0 + at, kind, delta if kind == TRAVERSAL else value)
            for at, kind, delta, value in drawn
        },
        key=lambda row: (row[0], row[1]),
    )
    reset_at: set[int] = set()
    kept = []
    for ts, kind, value in rows:
        if kind == RESET:
            if ts in reset_at:
                continue
            reset_at.add(ts)
        kept.append((ts, kind, value))
    return kept


def apply_all(
    made: list[Rollup], count: int, floor: bool, bounds: list[int]
) -> list[tuple[int, ...]]:
    """Each bucket of ``bounds`` from the rollups, as ``(count, min, max, ins, outs, events)``."""
    out: list[tuple[int, ...]] = []
    by_start = {r.start: r for r in made}
    for start, end in pairwise(bounds):
        low = high = count
        ins = outs = events = 0
        at = start
        while at < end:
            rollup = by_start[at]
            count, lo, hi = rollup.apply(count, floor)
            low, high = min(low, lo), max(high, hi)
            ins, outs, events = ins + rollup.entrances, outs + rollup.exits, events + rollup.events
            at = rollup.end if rollup.events else min(rollup.end, end)
            if not rollup.events and rollup.end > end:
                by_start[end] = Rollup(end, rollup.end)
        out.append((count, low, high, ins, outs, events))
    return out


@settings(max_examples=400, deadline=None)
@given(space=spaces, drawn=items, count=st.integers(0, 5), cut=st.integers(1, 24))
def test_rollups_equal_the_fold_of_each_bucket(
    space: Space, drawn: list[tuple[int, int, int, int]], count: int, cut: int
) -> None:
    rows = in_fold_order(drawn)
    folded = [(kind, ts, value) for ts, kind, value in rows]
    bounds = list(range(T0, T0 + SPAN + 1, BUCKET_MS))
    fold = BucketFold(space, SpaceState(T0 - 1, count), bounds)
    fold.rows(folded)
    expected = [(b.count, b.min, b.max, b.entrances, b.exits, b.events) for b in fold.finish()]

    builder = RollupBuilder(space, T0)
    made: list[Rollup] = []
    middle = T0 + cut * BUCKET_MS  # closed in two steps, as a store's refreshes do
    builder.rows([r for r in folded if r[1] < middle], RESET)
    made += builder.close(middle)
    builder.rows([r for r in folded if r[1] >= middle], RESET)
    made += builder.close(T0 + SPAN)
    assert made[0].start == T0
    assert made[-1].end == T0 + SPAN
    assert all(a.end == b.start for a, b in pairwise(made))
    assert apply_all(made, count, not space.allow_negative, bounds) == expected


def test_a_builder_starts_at_a_boundary() -> None:
    with pytest.raises(ValueError, match="boundary"):
        RollupBuilder(Space("A", "A"), T0 + 1)


@settings(max_examples=400, deadline=None)
@given(
    space=spaces,
    steps=st.lists(st.sampled_from([1, -1, -1, None]), max_size=40),
    count=st.integers(0, 3),
)
def test_one_bucket_from_any_count(space: Space, steps: list[int | None], count: int) -> None:
    """Many events in one bucket, where the floor stops the count again and again: the
    rollup's function gives what folding them from each starting count gives."""
    folded = [
        (TRAVERSAL, T0 + i, step) if step is not None else (RESET, T0 + i, i % 3)
        for i, step in enumerate(steps)
    ]
    builder = RollupBuilder(space, T0)
    builder.rows(folded, RESET)
    made = builder.close(T0 + BUCKET_MS)
    for start in range(count, count + 3):
        fold = BucketFold(space, SpaceState(T0 - 1, start), [T0, T0 + BUCKET_MS])
        fold.rows(folded)
        (b,) = fold.finish()
        assert apply_all(made, start, not space.allow_negative, [T0, T0 + BUCKET_MS]) == [
            (b.count, b.min, b.max, b.entrances, b.exits, b.events)
        ]


@settings(max_examples=300, deadline=None)
@given(space=spaces, drawn=items, cut=st.integers(1, 60))
def test_runs_of_traversals_roll_up_as_one_by_one(
    space: Space, drawn: list[tuple[int, int, int, int]], cut: int
) -> None:
    """``traversals`` (a replay's runs of rows, in batches) makes what ``delta`` does."""
    rows = in_fold_order(drawn)
    one = RollupBuilder(space, T0)
    one.rows([(kind, ts, value) for ts, kind, value in rows], RESET)
    bulk = RollupBuilder(space, T0)
    batch: list[tuple[str, int, int, int]] = []
    for i, (ts, kind, value) in enumerate(rows):
        if kind == RESET:
            bulk.traversals(batch, 0, len(batch))
            batch = []
            bulk.reset(ts, value)
        else:
            batch.append(("d", i, ts, value))
            if len(batch) == cut:
                bulk.traversals(batch, 0, len(batch))
                batch = []
    bulk.traversals(batch, 0, len(batch))
    assert bulk.close(T0 + SPAN) == one.close(T0 + SPAN)


def test_a_quiet_stretch_is_skipped_and_left_to_the_log() -> None:
    """A writer skips what is too quiet to be worth rolling up: no rollup is made for it, and
    the buckets after it are made as from a fresh start."""
    space = Space("A", "A")
    quiet = [(TRAVERSAL, T0 + i * 20 * 60_000, 1) for i in range(6)]  # one every 20 minutes
    builder = RollupBuilder(space, T0)
    assert builder.sparse(len(quiet), quiet[0][1], quiet[-1][1])
    assert not builder.sparse(3, T0, T0 + 60_000)  # too short to judge
    builder.skip_past(quiet[-1][1])
    busy_from = builder.done
    assert busy_from == T0 + 21 * BUCKET_MS  # the end of the last quiet event's bucket
    busy = [(TRAVERSAL, busy_from + i * 1000, 1) for i in range(12)]
    builder.rows(busy, RESET)
    made = builder.close(busy_from + BUCKET_MS)
    assert [(r.start, r.events, r.entrances) for r in made] == [(busy_from, 12, 12)]
