"""History: the edges of snapshots that a random search reaches rarely, spelled out."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headcount.domain.events import Reset, Traversal
from headcount.domain.fold import Folder, SpaceState
from headcount.domain.topology import Space, Topology
from headcount.eventstore.answers import RESET, TRAVERSAL
from headcount.eventstore.store import EventStore
from headcount.history import History, SpaceView
from headcount.history.counts import Cadence
from tests.store_readers import snapshots_before

SEED_TOPOLOGY = Path(__file__).resolve().parents[2] / "examples" / "seed" / "topology.toml"
T = 1_600_000_000_000  # any time after the seed assignments start
FAR = T + 10**9


@pytest.fixture
def seed() -> Topology:
    return Topology.from_toml(SEED_TOPOLOGY.read_text(), source=str(SEED_TOPOLOGY))


def enter(seq: int, ts: int, dpu: str = "283") -> Traversal:
    return Traversal(dpu, seq, ts, 1)


def leave(seq: int, ts: int, dpu: str = "283") -> Traversal:
    return Traversal(dpu, seq, ts, -1)


async def snapshot_times(store: EventStore, topology: Topology, space: str) -> list[int]:
    view = SpaceView.of(topology, space)
    found = await snapshots_before(store, space, view.fingerprint, at_or_before=FAR, limit=100)
    return sorted(s.as_of for s in found)


async def test_snapshot_never_splits_a_millisecond(store: EventStore, seed: Topology) -> None:
    # Three of five events share T+2; a snapshot is due after the second, and after the fourth.
    await store.log.append(
        [enter(1, T + 1), enter(2, T + 2), enter(3, T + 2), enter(4, T + 2), enter(5, T + 3)]
    )
    history = History(store, seed, snapshot_every=2, snapshot_lag_ms=0)
    assert await history.refresh_snapshots(now=FAR) == 1
    assert await snapshot_times(store, seed, "A") == [T + 2]
    answer = await history.count_at("A", T + 2)
    assert (answer.count, answer.snapshot, answer.folded) == (4, T + 2, 0)


async def test_late_event_at_a_snapshots_time_makes_it_unusable(
    store: EventStore, seed: Topology
) -> None:
    await store.log.append([enter(1, T + 1), enter(2, T + 2)])
    history = History(store, seed, snapshot_every=2, snapshot_lag_ms=0)
    await history.refresh_snapshots(now=FAR)
    assert (await history.count_at("A", T + 5)).snapshot == T + 2

    await store.log.append([enter(10, T + 2, dpu="423")])  # arrives late, same millisecond
    answer = await history.count_at("A", T + 5)
    assert answer.count == 3
    assert answer.snapshot is None


async def test_late_event_before_snapshot_refolds_through_the_floor(
    store: EventStore, seed: Topology
) -> None:
    # Folded alone: leave (floored at 0), enter -> 1. The late entry at T+0 comes first in
    # time: enter, leave, enter -> 1 as well, but the floor no longer swallows the leave.
    await store.log.append([leave(2, T + 10), enter(3, T + 20), enter(4, T + 30)])
    history = History(store, seed, snapshot_every=1, snapshot_lag_ms=0)
    await history.refresh_snapshots(now=FAR)
    assert (await history.count_at("A", T + 30)).count == 2

    await store.log.append([enter(1, T + 0)])
    assert (await history.count_at("A", T + 10)).count == 0
    assert (await history.count_at("A", T + 30)).count == 2
    await store.log.append([leave(5, T + 5)])
    assert (await history.count_at("A", T + 30)).count == 2
    assert (await history.count_at("A", T + 5)).count == 0

    # A refresh writes snapshots that see the late events; they are used again.
    await history.refresh_snapshots(now=FAR)
    answer = await history.count_at("A", T + 30)
    assert answer.snapshot == T + 30
    assert answer.count == 2


async def test_late_reset_makes_later_snapshots_unusable(store: EventStore, seed: Topology) -> None:
    await store.log.append([enter(1, T + 1), enter(2, T + 2), enter(3, T + 3)])
    history = History(store, seed, snapshot_every=1, snapshot_lag_ms=0)
    await history.refresh_snapshots(now=FAR)
    await store.log.append_reset(Reset("A", T + 2, 10))
    assert (await history.count_at("A", T + 1)).count == 1
    # The reset comes first in its millisecond: 10, then the entries at T+2 and T+3.
    answer = await history.count_at("A", T + 3)
    assert (answer.count, answer.snapshot) == (12, T + 1)


async def test_snapshots_of_another_topology_are_not_used(
    store: EventStore, seed: Topology
) -> None:
    await store.log.append([enter(1, T + 1), enter(2, T + 2)])
    await History(store, seed, snapshot_every=1, snapshot_lag_ms=0).refresh_snapshots(now=FAR)
    flipped = Topology.from_toml(
        SEED_TOPOLOGY.read_text().replace(
            'links = [{ space = "A", sensor_placement = 1 }]\n',
            'links = [{ space = "A", sensor_placement = -1 }]\n',
        )
    )
    assert flipped.fingerprint("A") != seed.fingerprint("A")
    answer = await History(store, flipped).count_at("A", T + 5)
    assert (answer.count, answer.snapshot) == (0, None)
    # B's sources did not change, so its snapshots stay usable under the new topology.
    assert flipped.fingerprint("B") == seed.fingerprint("B")


async def test_no_snapshot_within_the_lag_of_the_newest_event(
    store: EventStore, seed: Topology
) -> None:
    minute = 60_000
    await store.log.append([enter(i, T + i * minute) for i in range(10)])
    history = History(store, seed, snapshot_every=1, snapshot_lag_ms=3 * minute)
    await history.refresh_snapshots(now=FAR)
    assert await snapshot_times(store, seed, "A") == [T + i * minute for i in range(7)]
    # Nothing new: a second refresh writes nothing.
    assert await history.refresh_snapshots(now=FAR) == 0


async def test_count_before_anything_and_for_unknown_space(
    store: EventStore, seed: Topology
) -> None:
    history = History(store, seed)
    assert (await history.count_at("A", 0)).count == 0
    with pytest.raises(LookupError, match="nope"):
        await history.count_at("nope", T)


async def test_events_of_a_dpu_before_its_assignment_do_not_count(
    store: EventStore, seed: Topology
) -> None:
    before_2018 = 1_500_000_000_000
    await store.log.append([enter(1, before_2018), enter(2, T)])
    assert (await History(store, seed).count_at("A", FAR)).count == 1


def reference(events: list[Traversal], ts: int) -> tuple[int, int, int]:
    """Count, entrances, exits of space A (DPU 283 hangs inside it) at ``ts``, folded plainly."""
    count = entrances = exits = 0
    for event in sorted(events, key=lambda e: (e.ts, e.dpu_id, e.seq)):
        if event.ts > ts:
            break
        count = max(0, count + event.direction)
        entrances += event.direction > 0
        exits += event.direction < 0
    return count, entrances, exits


async def test_a_late_event_before_many_snapshots_folds_the_long_tail_exactly(
    store: EventStore, seed: Topology
) -> None:
    """A late event makes every snapshot after it unusable, and the tail from the snapshot
    before it is longer than one statement's page: the answer is streamed from that snapshot
    and must be the plain fold."""
    events = [
        Traversal("283", seq, T + seq * 10, -1 if seq % 7 in (3, 5) or seq % 50 > 45 else 1)
        for seq in range(1, 3001)
    ]
    await store.log.append(events)
    history = History(store, seed, snapshot_every=100, snapshot_lag_ms=0)
    await history.refresh_snapshots(now=FAR)
    late = [Traversal("283", 5000, T + 1_005, 1), Traversal("283", 5001, T + 1_005, -1)]
    await store.log.append(late)
    for ts in (T + 1_004, T + 1_005, T + 15_000, T + 30_000, FAR):
        answer = await history.count_at("A", ts)
        state = answer.state
        assert (state.count, state.entrances, state.exits) == reference(events + late, ts), ts
    answer = await history.count_at("A", FAR)
    assert answer.snapshot is not None
    assert answer.snapshot < T + 1_005
    assert answer.folded > 1_000  # longer than the one-statement path's page


_ROWS = st.lists(
    st.tuples(
        st.sampled_from([RESET, TRAVERSAL, TRAVERSAL]), st.integers(0, 40), st.integers(-1, 5)
    ),
    max_size=60,
).map(
    lambda rows: sorted(
        (k, ts, max(v, 0) if k == RESET else (1 if v > 0 else -1)) for k, ts, v in rows
    )
)


@settings(max_examples=300, deadline=None)
@given(
    rows=_ROWS,
    every=st.integers(1, 7),
    horizon=st.integers(0, 45),
    daily=st.booleans(),
    cut=st.integers(0, 60),
)
def test_cadence_fold_is_the_row_by_row_fold(
    rows: list[tuple[int, int, int]], every: int, horizon: int, daily: bool, cut: int
) -> None:
    """Folding the rows between two due points in one call takes the same snapshots and ends
    in the same state as asking the cadence before each row, in batches cut anywhere."""
    space = Space("A", "A", daily_reset=datetime.time(0, 0) if daily else None)
    rows.sort(key=lambda r: (r[1], r[0] != RESET))  # fold order: a reset first in its ms

    expected: list[SpaceState] = []
    by_row, cadence = Folder(space), Cadence(every, horizon)
    for kind, ts, value in rows:
        if cadence.snapshot_before(by_row.as_of, ts):
            expected.append(by_row.state())
        if kind == RESET:
            by_row.reset(ts, value)
        else:
            by_row.delta(ts, value)
        cadence.folded()

    taken: list[SpaceState] = []
    folder, chunked = Folder(space), Cadence(every, horizon)
    for batch in (rows[:cut], rows[cut:]):
        chunked.fold(folder, batch, taken.append)

    assert taken == expected
    assert folder.state() == by_row.state()
    assert (chunked.count, chunked.due) == (cadence.count, cadence.due)
