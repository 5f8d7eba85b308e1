"""One-statement answers: they agree with the general path row by row, and step aside (``None``)
exactly where that path would look past the newest snapshot."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from headcount.domain.events import Reset, Traversal, space_delta
from headcount.domain.topology import Topology
from headcount.errors import StoreError
from headcount.eventstore.answers import RESET, TRAVERSAL, SnapshotTail
from headcount.eventstore.records import StoredReset
from headcount.eventstore.statements import TAIL_PAGE
from headcount.eventstore.store import EventStore
from headcount.history import History, SpaceView
from headcount.history.replay import Replay
from tests.servers import PostgresCluster

SEED_TOPOLOGY = Path(__file__).resolve().parents[2] / "examples" / "seed" / "topology.toml"
T = 1_600_000_000_000
FAR = T + 10**9


@pytest.fixture
def seed() -> Topology:
    return Topology.from_toml(SEED_TOPOLOGY.read_text(), source=str(SEED_TOPOLOGY))


async def general(
    store: EventStore, topology: Topology, space_id: str, until: int
) -> SnapshotTail | None:
    """What the general path reads for the same question, in the fast path's shape."""
    view = SpaceView.of(topology, space_id)
    base = await store.snapshots.newest_usable(
        space_id, view.fingerprint, view.sources, at_or_before=until
    )
    if base is None:
        return None
    rows: list[tuple[int, ...]] = []
    async for item in store.log.space_log(space_id, view.sources, after=base.as_of, until=until):
        if isinstance(item, StoredReset):
            rows.append((RESET, item.ts, item.count))
        else:
            traversal, source = item
            delta = space_delta(traversal.direction, source.sensor_placement)
            rows.append((TRAVERSAL, traversal.ts, delta))
    return SnapshotTail(base.state, rows)


async def quick(
    store: EventStore, topology: Topology, space_id: str, until: int
) -> SnapshotTail | None:
    view = SpaceView.of(topology, space_id)
    return await store.answers.snapshot_tail(space_id, view.fingerprint, view.sources, until=until)


async def random_store(store: EventStore, seed: Topology, rng: random.Random) -> list[int]:
    """Events from both DPUs with many shared milliseconds, snapshots every 5 events; the
    times worth asking about."""
    events = [
        Traversal(rng.choice(["283", "423"]), seq, T + rng.randrange(0, 400), rng.choice([1, -1]))
        for seq in range(300)
    ]
    await store.log.append(events)
    await Replay(store, seed, snapshot_every=5, snapshot_lag_ms=0).run()
    return [T + rng.randrange(-5, 420) for _ in range(40)]


async def test_agrees_with_the_general_path(store: EventStore, seed: Topology) -> None:
    rng = random.Random(5)
    times = await random_store(store, seed, rng)
    taken = 0
    for ts in times:
        for space_id in ("A", "B"):
            fast = await quick(store, seed, space_id, ts)
            if fast is not None:
                taken += 1
                assert fast == await general(store, seed, space_id, ts)
    assert taken > len(times)  # the fast path answers the plain case


async def test_steps_aside_after_a_late_event_or_reset(store: EventStore, seed: Topology) -> None:
    rng = random.Random(8)
    times = await random_store(store, seed, rng)
    history = History(store, seed)
    before = {ts: (await history.count_at("A", ts)).count for ts in times}
    # A late traversal at T+100 and a reset at T+200: snapshots after either are unusable.
    await store.log.append([Traversal("283", 10_000, T + 100, 1)])
    await store.log.append_reset(Reset("A", T + 200, 7, "test"))
    for ts in times:
        fast = await quick(store, seed, "A", ts)
        if ts >= T + 100:
            assert fast is None, ts  # the newest snapshot misses the late event
        elif fast is not None:
            assert fast == await general(store, seed, "A", ts)
        answer = await history.count_at("A", ts)
        if ts < T + 100:
            assert answer.count == before[ts]
    # A new replay writes snapshots that hold both: the fast path answers again, the same.
    await Replay(store, seed, snapshot_every=5, snapshot_lag_ms=0).run()
    fast = await quick(store, seed, "A", T + 300)
    assert fast is not None
    assert fast == await general(store, seed, "A", T + 300)


async def test_steps_aside_from_a_tail_longer_than_a_page(
    store: EventStore, seed: Topology
) -> None:
    await store.log.append([Traversal("283", seq, T + seq, 1) for seq in range(10)])
    await Replay(store, seed, snapshot_every=5, snapshot_lag_ms=0).run()
    await store.log.append([Traversal("283", seq, T + seq, 1) for seq in range(10, TAIL_PAGE + 20)])
    # The newest snapshot is at T+9: a page of events after it is answered, one more is not.
    tail = await quick(store, seed, "A", T + 9 + TAIL_PAGE)
    assert tail is not None
    assert len(tail.rows) == TAIL_PAGE
    assert await quick(store, seed, "A", T + 9 + TAIL_PAGE + 1) is None
    answer = await History(store, seed).count_at("A", T + TAIL_PAGE + 19)
    assert answer.count == TAIL_PAGE + 20


async def test_no_snapshot_and_a_closed_store_step_aside(store: EventStore, seed: Topology) -> None:
    await store.log.append([Traversal("283", 1, T + 1, 1)])
    assert await quick(store, seed, "A", FAR) is None  # no snapshot yet
    await Replay(store, seed, snapshot_every=1, snapshot_lag_ms=0).run()
    assert await quick(store, seed, "A", FAR) is not None
    await store.answers.close()
    assert await quick(store, seed, "A", FAR) is None
    assert (await History(store, seed).count_at("A", FAR)).count == 1


async def test_a_postgres_server_gone_sends_answers_to_the_general_path(
    tmp_path: Path, seed: Topology
) -> None:
    with PostgresCluster(tmp_path / "pg") as cluster:
        async with await EventStore.open(cluster.url) as store:
            await store.log.append([Traversal("283", 1, T + 1, 1)])
            await Replay(store, seed, snapshot_every=1, snapshot_lag_ms=0).run()
            assert await quick(store, seed, "A", FAR) is not None
            cluster.stop()
            assert await quick(store, seed, "A", FAR) is None  # no error from the fast path
            with pytest.raises(StoreError):  # the general path reports the store down
                await History(store, seed).count_at("A", FAR)
            cluster.start()
            assert (await History(store, seed).count_at("A", FAR)).count == 1
            assert await quick(store, seed, "A", FAR) is not None  # a new connection


async def test_a_sqlite_file_name_that_means_something_in_a_uri(
    tmp_path: Path, seed: Topology
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'odd name ?#%.db'}"
    async with await EventStore.open(url) as store:
        await store.log.append([Traversal("283", 1, T + 1, 1)])
        await Replay(store, seed, snapshot_every=1, snapshot_lag_ms=0).run()
        assert await quick(store, seed, "A", FAR) is not None
