"""Replay: a new snapshot generation folded in one pass, verification, and dry runs.

That a replay's answers equal the reference fold over random histories is in
``test_counts_property``; these are the cases spelled out.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

import pytest
from sqlalchemy import func, insert, select

import headcount.eventstore.log as log_module
import headcount.eventstore.replays as replays_module
import headcount.history.replay as replay_module
from headcount.domain.events import Delta, Reset, Traversal, fold_key, space_delta
from headcount.domain.fold import EMPTY, advance, fold_all
from headcount.domain.timefmt import format_ms
from headcount.domain.topology import Topology
from headcount.errors import UnknownSpaceError
from headcount.eventstore.schema import replayed_spaces, snapshots
from headcount.eventstore.store import EventStore
from headcount.history import History, SpaceView
from headcount.history.replay import Replay
from tests.store_readers import snapshots_before

SEED_TOPOLOGY = Path(__file__).resolve().parents[2] / "examples" / "seed" / "topology.toml"
T = 1_600_000_000_000
FAR = T + 10**9


def seed(*, z_placement_in_a: int = 1, move_283_at: int | None = None) -> Topology:
    """The seed topology; ``z_placement_in_a=-1`` mounts DPU 423 backwards (Z's links
    flipped); ``move_283_at`` moves DPU 283 from X to Z at that time."""
    assignments: list[dict[str, object]] = [
        {"dpu": "423", "doorway": "Z", "valid_from": "2018-01-01T00:00:00Z"}
    ]
    if move_283_at is None:
        assignments.append({"dpu": "283", "doorway": "X", "valid_from": "2018-01-01T00:00:00Z"})
    else:
        assignments += [
            {
                "dpu": "283",
                "doorway": "X",
                "valid_from": "2018-01-01T00:00:00Z",
                "valid_until": format_ms(move_283_at),
            },
            {"dpu": "283", "doorway": "Z", "valid_from": format_ms(move_283_at)},
        ]
    return Topology.from_dict(
        {
            "spaces": [{"id": "A", "name": "A"}, {"id": "B", "name": "B"}],
            "doorways": [
                {"id": "X", "name": "X", "links": [{"space": "A", "sensor_placement": 1}]},
                {
                    "id": "Z",
                    "name": "Z",
                    "links": [
                        {"space": "A", "sensor_placement": z_placement_in_a},
                        {"space": "B", "sensor_placement": -z_placement_in_a},
                    ],
                },
            ],
            "assignments": assignments,
        }
    )


def walk(dpu: str, n: int, start: int) -> list[Traversal]:
    """``n`` people walking toward the DPU, one a second from ``T + start`` seconds."""
    return [Traversal(dpu, start + i, T + (start + i) * 1_000, 1) for i in range(n)]


async def snapshot_times(store: EventStore, topology: Topology, space: str) -> list[int]:
    view = SpaceView.of(topology, space)
    found = await snapshots_before(store, space, view.fingerprint, at_or_before=FAR, limit=1000)
    return sorted(s.as_of for s in found)


async def test_replay_writes_a_generation_that_supersedes_the_old(store: EventStore) -> None:
    topology = seed()
    await store.log.append(walk("283", 10, 0) + walk("423", 10, 100))
    await History(store, topology, snapshot_every=3, snapshot_lag_ms=0).refresh_snapshots(now=FAR)
    old = await snapshot_times(store, topology, "A")
    assert len(old) == 6

    summary = await Replay(store, topology, snapshot_every=7, snapshot_lag_ms=0).run()

    assert (summary.spaces, summary.rows, summary.events) == (2, 20, 30)
    assert summary.generation == 1
    new = await snapshot_times(store, topology, "A")
    assert len(new) == 2  # every 7 of A's 20 events; the old six are superseded
    assert not set(new) & set(old) - {T + 106_000}
    answer = await History(store, topology).count_at("A", FAR)
    assert (answer.count, answer.snapshot) == (20, new[-1])
    # Snapshots written later by the service belong with the newest generation.
    await store.log.append(walk("283", 20, 10))
    written = await History(store, topology, snapshot_every=5, snapshot_lag_ms=0)._refresh_space(
        "A", FAR
    )
    assert written > 0
    found = await snapshots_before(store, "A", topology.fingerprint("A"), at_or_before=FAR, limit=1)
    assert found[0].generation == 1


async def test_the_end_of_a_replay_is_one_commit(
    store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The snapshots taken since the last batch written, the rollups and the record that the
    spaces are finished go in one transaction: a replay that fails there leaves its
    generation unfinished, with none of them stored, and the snapshots in use as they were."""
    topology = seed()
    await store.log.append(walk("283", 700, 0))  # over two five-minute buckets: rollups
    await History(store, topology, snapshot_every=10, snapshot_lag_ms=0).refresh_snapshots(now=FAR)
    before = await snapshot_times(store, topology, "A")

    async def broken(conn: object, rows: object) -> None:
        raise RuntimeError("the disk is full")

    monkeypatch.setattr(replays_module, "insert_rollups", broken)
    with pytest.raises(RuntimeError, match="disk is full"):
        await Replay(store, topology, snapshot_every=100, snapshot_lag_ms=0).run()
    monkeypatch.undo()

    async with store.engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(replayed_spaces)) == 0
        assert await conn.scalar(select(func.count()).where(snapshots.c.generation == 1)) == 0
    assert await snapshot_times(store, topology, "A") == before
    summary = await Replay(store, topology, snapshot_every=100, snapshot_lag_ms=0).run()
    async with store.engine.connect() as conn:
        stored = await conn.scalar(
            select(func.count()).where(snapshots.c.generation == summary.generation)
        )
    assert stored == summary.snapshots == 7  # every 100 of A's 700 events; B has none


async def test_replay_from_a_time_keeps_the_snapshots_before_it(store: EventStore) -> None:
    topology = seed()
    await store.log.append(walk("283", 30, 0))
    history = History(store, topology, snapshot_every=5, snapshot_lag_ms=0)
    await history.refresh_snapshots(now=FAR)
    before = await snapshot_times(store, topology, "A")

    summary = await Replay(store, topology, snapshot_every=4, snapshot_lag_ms=0).run(
        from_ts=T + 12_000
    )

    # Started from the snapshot at T+9s (after 10 events): 20 events left to fold.
    assert summary.events == 20
    after = await snapshot_times(store, topology, "A")
    assert [t for t in after if t <= T + 9_000] == [t for t in before if t <= T + 9_000]
    assert [t for t in after if t > T + 9_000] == [T + s * 1_000 for s in (13, 17, 21, 25, 29)]
    assert (await history.count_at("A", FAR)).count == 30


async def test_a_corrected_placement_is_folded_from_the_log_until_replayed(
    store: EventStore, caplog: pytest.LogCaptureFixture
) -> None:
    """DPU 423 was mounted backwards: flipping Z's links and replaying corrects every
    answer; until the replay, nothing is served from snapshots of the old topology."""
    wrong, right = seed(), seed(z_placement_in_a=-1)
    await store.log.append(walk("283", 5, 0) + walk("423", 3, 100))
    await History(store, wrong, snapshot_every=2, snapshot_lag_ms=0).refresh_snapshots(now=FAR)
    assert (await History(store, wrong).count_at("A", FAR)).count == 8

    with caplog.at_level(logging.WARNING, logger="headcount.history"):
        answer = await History(store, right).count_at("A", FAR)
    assert (answer.count, answer.snapshot) == (2, None)
    assert "folded under another topology" in caplog.text
    assert "headcount replay" in caplog.text

    await Replay(store, right, snapshot_every=2, snapshot_lag_ms=0).run()

    corrected = History(store, right)
    answer = await corrected.count_at("A", FAR)
    assert answer.count == 2
    assert answer.snapshot is not None
    assert (await corrected.count_at("B", FAR)).count == 3
    assert (await corrected.count_at("A", T + 101_000)).count == 3  # 5 in, 2 of them out


async def test_a_recorded_move_reattributes_events_by_time(store: EventStore) -> None:
    moved_at = T + 50_000
    await store.log.append(walk("283", 10, 45))  # T+45s .. T+54s: five before the move
    before, after = seed(), seed(move_283_at=moved_at)
    await Replay(store, before, snapshot_lag_ms=0).run()
    assert (await History(store, before).count_at("B", FAR)).count == 0

    await Replay(store, after, snapshot_every=2, snapshot_lag_ms=0).run()

    history = History(store, after)
    # Through X before the move (A +1 each); through Z after it (A +1, B -1 floored at 0).
    assert (await history.count_at("A", FAR)).count == 10
    assert (await history.count_at("B", FAR)).count == 0
    assert (await history.count_at("A", moved_at - 1)).count == 5


async def test_resets_are_folded_in_time_order(store: EventStore) -> None:
    topology = seed()
    await store.log.append(walk("283", 6, 0))
    await store.log.append_reset(Reset("A", T + 2_500, 10))

    _, states = await Replay(store, topology).states_at([T + 2_000, T + 2_500, T + 5_000])

    assert [s.count for s in states["A"]] == [3, 10, 13]
    assert [s.count for s in states["B"]] == [0, 0, 0]


async def test_verify_finds_a_snapshot_that_differs_from_the_log(store: EventStore) -> None:
    topology = seed()
    await store.log.append(walk("283", 10, 0))
    await Replay(store, topology, snapshot_every=4, snapshot_lag_ms=0).run()
    summary, mismatches, states = await Replay(store, topology).verify()
    assert mismatches == []
    assert summary.rows == 10
    assert states["A"].count == 10

    head = await store.log.head()
    async with store.engine.begin() as conn:
        await conn.execute(
            insert(snapshots).values(
                space_id="A",
                fingerprint=topology.fingerprint("A"),
                as_of=T + 5_000,
                count=99,
                entrances=6,
                exits=0,
                position=head.position,
                reset_id=head.reset_id,
                taken_at=0,
                generation=1,
            )
        )

    _, mismatches, _ = await Replay(store, topology).verify()
    assert [(m.space_id, m.at, m.stored.count, m.folded.count) for m in mismatches] == [
        ("A", T + 5_000, 99, 6)
    ]
    assert "count=99" in mismatches[0].describe()


async def test_a_subset_of_spaces_is_replayed_alone(store: EventStore) -> None:
    topology = seed()
    await store.log.append(walk("283", 4, 0) + walk("423", 4, 100))
    await History(store, topology, snapshot_every=2, snapshot_lag_ms=0).refresh_snapshots(now=FAR)
    b_before = await snapshot_times(store, topology, "B")

    summary = await Replay(store, topology, space_ids=["A"], snapshot_lag_ms=0).run()

    assert summary.spaces == 1
    assert summary.events == 8
    assert await snapshot_times(store, topology, "B") == b_before
    assert await snapshot_times(store, topology, "A") == []  # superseded, 8 < 100 events
    with pytest.raises(UnknownSpaceError):
        Replay(store, topology, space_ids=["nowhere"])


@pytest.mark.parametrize(
    ("rows_per_space", "scan_batch"),
    [(8, 5_000), (1, 7), (10**9, 5_000)],
    ids=["space-by-space", "space-by-space-in-small-batches", "event-by-event"],
)
async def test_both_ways_of_folding_a_batch_give_the_reference_fold(
    store: EventStore, monkeypatch: pytest.MonkeyPatch, rows_per_space: int, scan_batch: int
) -> None:
    """A batch is folded space by space when it has enough rows a space, else event by event
    (``_ROWS_PER_SPACE``): both give the fold of each space's events, with a DPU moved in the
    middle of the log, one mounted backwards (its rows reach one space reversed), one not in
    the topology, probes between events and recovery's tail. In small batches each DPU's
    hand is kept from batch to batch until the move: a stale one would route the moved DPU's
    rows to its old doorway."""
    monkeypatch.setattr(replay_module, "_ROWS_PER_SPACE", rows_per_space)
    monkeypatch.setattr(log_module, "SCAN_BATCH", scan_batch)
    move = T + 200_000
    topology = seed(z_placement_in_a=-1, move_283_at=move)
    rng = random.Random(7)
    sent = [
        Traversal(dpu, seq, T + rng.randrange(400_000), rng.choice((1, -1)))
        for seq in range(300)
        for dpu in ("283", "423", "unassigned")
    ]
    await store.log.append(sent)
    times = sorted(T + rng.randrange(400_000) for _ in range(5))

    _, states = await Replay(store, topology).states_at(times)
    _, recovered = await Replay(store, topology).recover_at({"A": times[2], "B": times[3]})

    for space_id in ("A", "B"):
        space = topology.space(space_id)
        events = sorted(
            (
                Delta(t.ts, t.dpu_id, t.seq, space_delta(t.direction, link.sensor_placement))
                for t in sent
                for link in topology.links_at(t.dpu_id, t.ts)
                if link.space_id == space_id
            ),
            key=fold_key,
        )
        assert states[space_id] == [
            advance(space, fold_all(space, EMPTY, (e for e in events if e.ts <= at)), at)
            for at in times
        ]
        checkpoint = times[2] if space_id == "A" else times[3]
        settled, recent = recovered[space_id]
        assert (
            settled.count == fold_all(space, EMPTY, (e for e in events if e.ts <= checkpoint)).count
        )
        assert recent == [e for e in events if e.ts > checkpoint]
