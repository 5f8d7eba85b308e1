"""Comparing a corrected topology with the store's: counts before and after, per space and
moment, for the spaces the correction changes."""

from __future__ import annotations

from headcount.domain.topology import Topology
from headcount.eventstore.store import EventStore
from headcount.history import History
from headcount.history.compare import CountChange, changed_spaces, compare_topologies
from tests.history.test_replay import FAR, T, seed, walk


def with_c(x_placement: int) -> Topology:
    """The seed's A and B, with doorway X (DPU 283) also leading into a new space C, and
    A's side of X mounted at ``x_placement``."""
    return Topology.from_dict(
        {
            "spaces": [{"id": s, "name": s} for s in ("A", "B", "C")],
            "doorways": [
                {
                    "id": "X",
                    "name": "X",
                    "links": [
                        {"space": "A", "sensor_placement": x_placement},
                        {"space": "C", "sensor_placement": -1},
                    ],
                },
                {
                    "id": "Z",
                    "name": "Z",
                    "links": [
                        {"space": "A", "sensor_placement": 1},
                        {"space": "B", "sensor_placement": -1},
                    ],
                },
            ],
            "assignments": [
                {"dpu": "283", "doorway": "X", "valid_from": "2018-01-01T00:00:00Z"},
                {"dpu": "423", "doorway": "Z", "valid_from": "2018-01-01T00:00:00Z"},
            ],
        }
    )


async def test_counts_before_and_after_a_corrected_placement(store: EventStore) -> None:
    """DPU 423 mounted backwards: A and B fold differently; the counts before the first
    event through Z stay, those after change."""
    wrong, right = seed(), seed(z_placement_in_a=-1)
    await store.log.append(walk("283", 5, 0) + walk("423", 3, 100))
    await History(store, wrong, snapshot_every=2, snapshot_lag_ms=0).refresh_snapshots(now=FAR)

    comparison = await compare_topologies(store, wrong, right, [FAR, T + 50_000, FAR])

    assert comparison.counts == [
        CountChange("A", T + 50_000, 5, 5),
        CountChange("A", FAR, 8, 2),
        CountChange("B", T + 50_000, 0, 0),
        CountChange("B", FAR, 0, 3),
    ]
    assert comparison.changed == 2
    assert comparison.unchanged == []
    assert comparison.summary.rows == 8


async def test_only_changed_and_new_spaces_are_compared(store: EventStore) -> None:
    before, after = seed(), with_c(-1)
    assert changed_spaces(before, after) == ["A", "C"]
    await store.log.append(walk("283", 2, 0) + walk("423", 1, 100))

    comparison = await compare_topologies(store, before, after, [FAR])

    # Through X: A +1 each under the seed, -1 (floored) corrected; C is new.
    assert comparison.counts == [CountChange("A", FAR, 3, 1), CountChange("C", FAR, None, 0)]
    assert comparison.counts[1].changed
    assert comparison.unchanged == ["B"]


async def test_chosen_spaces_are_compared_even_when_unchanged(store: EventStore) -> None:
    before, after = seed(), with_c(-1)
    await store.log.append(walk("423", 2, 0))

    comparison = await compare_topologies(store, before, after, [FAR], space_ids=["B", "B"])

    assert comparison.counts == [CountChange("B", FAR, 0, 0)]
    assert comparison.changed == 0
    assert comparison.unchanged == ["B"]
